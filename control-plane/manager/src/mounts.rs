//! The volumes a create asks to mount (upstream's dynamic CSI mounts): the body's `volumeMounts`
//! (`[{name, path}]`, name = a PersistentVolume) or the metadata extension keys `csi-volume-config`
//! (a JSON array of `{pvName, mountPath, subPath, readOnly}`) and `csi-volume-name` +
//! `csi-mount-point` (+ `csi-subpath`). As upstream, keys replace the body's list and the single
//! pair replaces the array. Only the kube backend mounts them.

use sandbox_api::types::CsiMountConfig;
use sandbox_storage::validate_mount_point;
use serde_json::Value;

use crate::extensions::{KubeExtensions, PREFIX};

/// The mounts of a create, validated; the error is the 400's message.
pub fn requested(
    body: Option<&[Value]>,
    keys: &KubeExtensions,
) -> Result<Vec<CsiMountConfig>, String> {
    let mut mounts = from_body(body.unwrap_or_default())?;
    if let Some(raw) = &keys.csi_volume_config {
        mounts = from_config_key(raw).map_err(|e| format!("Bad extension param: {e}"))?;
    }
    match (&keys.csi_volume_name, &keys.csi_mount_point) {
        (Some(pv), Some(path)) => {
            check_point(path).map_err(|e| format!("Bad extension param: {e}"))?;
            mounts = vec![CsiMountConfig {
                pv_name: pv.clone(),
                mount_path: path.clone(),
                sub_path: keys.csi_subpath.clone().filter(|s| !s.is_empty()),
                ..Default::default()
            }];
        }
        (None, None) => {}
        _ => {
            return Err(format!(
                "Bad extension param: both {PREFIX}csi-volume-name and {PREFIX}csi-mount-point must exist together or not at all"
            ));
        }
    }
    for (i, m) in mounts.iter().enumerate() {
        if m.pv_name.is_empty() {
            return Err(format!(
                "volume mount {i}: the PersistentVolume name (pvName) cannot be empty"
            ));
        }
        if mounts[..i].iter().any(|o| o.mount_path == m.mount_path) {
            return Err(format!(
                "volume mount path {:?} is duplicated",
                m.mount_path
            ));
        }
    }
    Ok(mounts)
}

fn check_point(p: &str) -> Result<(), String> {
    validate_mount_point(p).map_err(|why| format!("invalid containerMountPoint [{p}]: {why}"))
}

fn from_body(entries: &[Value]) -> Result<Vec<CsiMountConfig>, String> {
    let mut out: Vec<CsiMountConfig> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let field = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        if !e.is_object() {
            return Err(format!(
                "volumeMounts[{i}] must be an object with name and path"
            ));
        }
        let (name, path) = (field("name"), field("path"));
        if name.is_empty() {
            return Err(format!("volumeMounts[{i}].name cannot be empty"));
        }
        validate_mount_point(&path)
            .map_err(|why| format!("volumeMounts[{i}].path is invalid: {why}"))?;
        if out.iter().any(|m| m.mount_path == path) {
            return Err(format!("volumeMounts[{i}].path {path:?} is duplicated"));
        }
        out.push(CsiMountConfig {
            pv_name: name,
            mount_path: path,
            ..Default::default()
        });
    }
    Ok(out)
}

fn from_config_key(raw: &str) -> Result<Vec<CsiMountConfig>, String> {
    let mounts: Vec<CsiMountConfig> = serde_json::from_str(raw)
        .map_err(|_| format!("invalid multiCsiMountConfig [{PREFIX}csi-volume-config]: {raw}"))?;
    for m in &mounts {
        check_point(&m.mount_path)?;
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> KubeExtensions {
        KubeExtensions::default()
    }

    #[test]
    fn body_mounts_are_checked_like_upstream() {
        let ok = requested(Some(&[json!({"name": "pv-a", "path": "/data"})]), &keys()).unwrap();
        assert_eq!(ok[0].pv_name, "pv-a");
        assert_eq!(ok[0].mount_path, "/data");
        for (body, want) in [
            (
                json!([{"name": "", "path": "/d"}]),
                "volumeMounts[0].name cannot be empty",
            ),
            (
                json!([{"name": "a", "path": "d"}]),
                "volumeMounts[0].path is invalid: mount point must start with '/'",
            ),
            (
                json!([{"name": "a", "path": "/d"}, {"name": "b", "path": "/d"}]),
                "volumeMounts[1].path \"/d\" is duplicated",
            ),
            (json!(["x"]), "volumeMounts[0] must be an object"),
        ] {
            let e = requested(body.as_array().map(Vec::as_slice), &keys()).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn keys_replace_the_body_and_the_pair_replaces_the_array() {
        let body = [json!({"name": "pv-body", "path": "/body"})];
        let mut k = keys();
        k.csi_volume_config = Some(r#"[{"pvName":"pv-a","mountPath":"/a","subPath":"x","readOnly":true},{"pvName":"pv-b","mountPath":"/b"}]"#.into());
        let m = requested(Some(&body), &k).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].sub_path.as_deref(), m[0].read_only),
            (Some("x"), Some(true))
        );
        k.csi_volume_name = Some("pv-c".into());
        k.csi_mount_point = Some("/c".into());
        k.csi_subpath = Some("team".into());
        let m = requested(Some(&body), &k).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            (
                m[0].pv_name.as_str(),
                m[0].mount_path.as_str(),
                m[0].sub_path.as_deref()
            ),
            ("pv-c", "/c", Some("team"))
        );
    }

    #[test]
    fn bad_keys_name_what_is_wrong() {
        let mut k = keys();
        k.csi_volume_name = Some("pv".into());
        assert!(
            requested(None, &k)
                .unwrap_err()
                .contains("must exist together or not at all")
        );
        k.csi_mount_point = Some("/a/../b".into());
        assert_eq!(
            requested(None, &k).unwrap_err(),
            "Bad extension param: invalid containerMountPoint [/a/../b]: mount point contains invalid '..' path element"
        );
        let mut k = keys();
        k.csi_volume_config = Some("{not json".into());
        assert_eq!(
            requested(None, &k).unwrap_err(),
            "Bad extension param: invalid multiCsiMountConfig [e2b.agents.kruise.io/csi-volume-config]: {not json"
        );
        k.csi_volume_config =
            Some(r#"[{"pvName":"a","mountPath":"/x"},{"pvName":"b","mountPath":"/x"}]"#.into());
        assert!(requested(None, &k).unwrap_err().contains("duplicated"));
        k.csi_volume_config = Some(r#"[{"pvName":"","mountPath":"/x"}]"#.into());
        assert!(requested(None, &k).unwrap_err().contains("cannot be empty"));
    }
}
