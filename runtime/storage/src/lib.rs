//! sandbox-storage: dynamic CSI mounts into a running sandbox (upstream's "dynamic CSI mount").
//!
//! The control plane (the manager's kube backend, and the controller after a resume) turns a
//! mount config (`pvName`, `mountPath`, `subPath`, `readOnly`) and the PersistentVolume it names
//! into a CSI `NodePublishVolumeRequest` ([`publish_request`]), encodes it ([`encode_request`]:
//! base64 of the binary protobuf) and runs [`CLI_PATH`] `mount --driver <d> --config <b64>` inside
//! the sandbox through envd, as root, with `POD_UID` in its environment. The CLI
//! ([`mount::mount`]) calls `NodePublishVolume` on the driver's node plugin socket
//! (`/var/run/csi/sockets/<driver>/csi.sock`) with a target under the sandbox's mount root, then
//! links the requested path to it.
//!
//! Path rules have one home here: [`validate_mount_point`] (what the API accepts),
//! [`merge_sub_path`] (a subPath under the volume's base path) and [`mount::validate_in_sandbox`]
//! (what the CLI refuses to touch).

#![forbid(unsafe_code)]

pub mod client;
pub mod link;
pub mod mount;

use std::collections::HashMap;

use base64::Engine;
use prost::Message;

/// The CSI v1 messages and Node service client (server with the `server` feature).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

pub use csi::NodePublishVolumeRequest;

/// Where the CLI is in a sandbox (the agent-runtime injection copies it there).
pub const CLI_PATH: &str = "/mnt/envd/sandbox-runtime-storage";
/// The CSI node plugins' sockets: `<dir>/<driver>/csi.sock`.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/csi/sockets";
/// Overrides [`DEFAULT_SOCKET_DIR`] (a node without the usual layout, e.g. the test simulator).
pub const ENV_SOCKET_DIR: &str = "SANDBOX_STORAGE_SOCKET_DIR";
/// The mount root is the mount whose path contains this name (`/run/csi/mount-root`).
pub const MOUNT_ROOT_NAME: &str = "mount-root";
/// Overrides the mount root found in `/proc/mounts`.
pub const ENV_MOUNT_ROOT: &str = "SANDBOX_STORAGE_MOUNT_ROOT";
/// The volume context key of the pod's uid (filled from `POD_UID` when absent).
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
/// How long one mount may take inside the sandbox.
pub const MOUNT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Mounts of one sandbox run at most this many at a time.
pub const MOUNT_CONCURRENCY: usize = 3;

/// The request as the CLI's `--config` carries it: base64 (standard) of the binary protobuf.
pub fn encode_request(req: &NodePublishVolumeRequest) -> String {
    base64::engine::general_purpose::STANDARD.encode(req.encode_to_vec())
}

/// The inverse of [`encode_request`].
pub fn decode_request(config: &str) -> Result<NodePublishVolumeRequest, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(config.trim())
        .map_err(|e| format!("failed to decode CSI request config: {e}"))?;
    NodePublishVolumeRequest::decode(raw.as_slice())
        .map_err(|e| format!("failed to unmarshal CSI request: {e}"))
}

/// A mount path as the API accepts it (upstream's control-plane check): absolute, clean, no
/// `..` anywhere.
pub fn validate_mount_point(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("mount point cannot be empty".into());
    }
    if !p.starts_with('/') {
        return Err("mount point must start with '/'".into());
    }
    if p.contains("..") {
        return Err("mount point contains invalid '..' path element".into());
    }
    if clean(p) != p {
        return Err("mount point contains invalid path elements like '..' or '.'".into());
    }
    Ok(())
}

/// Lexical cleaning of an absolute path (Go's `path.Clean` for the inputs that reach it: no
/// `..` handling is needed once `..` is refused, but it is done anyway).
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `base` (the volume's `path` attribute, `/` by default) joined with `sub`, refusing anything
/// that would leave `base`.
pub fn merge_sub_path(base: &str, sub: &str) -> Result<String, String> {
    let wrap = |e: String| {
        format!("failed to merge and validate paths: base path={base}, sub path={sub}, err: {e}")
    };
    if base.is_empty() {
        return Err(wrap("base path cannot be empty".into()));
    }
    if !base.starts_with('/') {
        return Err(wrap(format!(
            "base path must be an absolute path starting with /, got: {base}"
        )));
    }
    if sub.contains('\0') {
        return Err(wrap("sub path contains null byte".into()));
    }
    if sub.is_empty() {
        return Err(wrap("sub path cannot be empty".into()));
    }
    let trimmed = sub.trim_start_matches('/');
    if matches!(trimmed, "" | "." | "..") {
        return Err(wrap("sub path cannot be . or ..".into()));
    }
    if trimmed.split('/').any(|s| s == "..") {
        return Err(wrap(format!(
            "sub path must not traverse to parent directory, got: {sub}"
        )));
    }
    let base = clean(base);
    let merged = clean(&format!("{base}/{trimmed}"));
    let inside = merged == base || merged.starts_with(&format!("{}/", base.trim_end_matches('/')));
    if !inside {
        return Err(wrap(format!(
            "merged path {merged} is not within base path {base}"
        )));
    }
    Ok(merged)
}

/// What a PersistentVolume contributes to a mount (read by the caller from `spec.csi`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeSource {
    pub pv_name: String,
    pub driver: String,
    pub fs_type: String,
    pub mount_options: Vec<String>,
    /// The PV allows reading only (ReadOnlyMany and no writer mode).
    pub read_only_only: bool,
    pub volume_attributes: HashMap<String, String>,
    /// The node-publish secret's data, as text.
    pub secrets: HashMap<String, String>,
}

/// Where and how one volume is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTarget {
    pub mount_path: String,
    pub sub_path: Option<String>,
    pub read_only: bool,
}

/// The `NodePublishVolumeRequest` for mounting `volume` at `target`: volume id
/// `<pv>-<6 random>` (a new one per mount), the PV's fs type and mount options, single-node
/// writer (reader when read-only), the PV's attributes with `path` narrowed to the subPath, the
/// secret's data. The pod uid is filled in by the CLI inside the sandbox.
pub fn publish_request(
    volume: &VolumeSource,
    target: &MountTarget,
) -> Result<NodePublishVolumeRequest, String> {
    use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
    let mut context = volume.volume_attributes.clone();
    if let Some(sub) = target.sub_path.as_deref().filter(|s| !s.is_empty()) {
        let base = context.get("path").map(String::as_str).unwrap_or("/");
        let merged = merge_sub_path(base, sub)?;
        context.insert("path".into(), merged);
    }
    let read_only = volume.read_only_only || target.read_only;
    let suffix: String = (0..6)
        .map(|_| {
            let i = rand::random_range(0..36u8);
            char::from(if i < 10 { b'0' + i } else { b'a' + i - 10 })
        })
        .collect();
    Ok(NodePublishVolumeRequest {
        volume_id: format!("{}-{suffix}", volume.pv_name),
        publish_context: HashMap::new(),
        staging_target_path: String::new(),
        target_path: target.mount_path.clone(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: volume.fs_type.clone(),
                mount_flags: volume.mount_options.clone(),
                volume_mount_group: String::new(),
            })),
            access_mode: Some(AccessMode {
                mode: if read_only {
                    Mode::SingleNodeReaderOnly
                } else {
                    Mode::SingleNodeWriter
                } as i32,
            }),
        }),
        readonly: read_only,
        secrets: volume.secrets.clone(),
        volume_context: context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_follow_the_api_rule() {
        assert!(validate_mount_point("/data").is_ok());
        assert!(validate_mount_point("/").is_ok());
        assert_eq!(
            validate_mount_point("").unwrap_err(),
            "mount point cannot be empty"
        );
        assert_eq!(
            validate_mount_point("data").unwrap_err(),
            "mount point must start with '/'"
        );
        assert_eq!(
            validate_mount_point("/a/../b").unwrap_err(),
            "mount point contains invalid '..' path element"
        );
        for bad in ["/a/", "/a//b", "/a/./b"] {
            assert_eq!(
                validate_mount_point(bad).unwrap_err(),
                "mount point contains invalid path elements like '..' or '.'",
                "{bad}"
            );
        }
    }

    #[test]
    fn sub_paths_stay_under_the_base() {
        assert_eq!(merge_sub_path("/", "a/b").unwrap(), "/a/b");
        assert_eq!(
            merge_sub_path("/share", "/team/x").unwrap(),
            "/share/team/x"
        );
        assert_eq!(merge_sub_path("/share/", "x/./y").unwrap(), "/share/x/y");
        for (base, sub, why) in [
            ("", "a", "base path cannot be empty"),
            ("rel", "a", "base path must be an absolute path"),
            ("/", "", "sub path cannot be empty"),
            ("/", "..", "sub path cannot be . or .."),
            ("/", "/", "sub path cannot be . or .."),
            ("/s", "a/../../x", "must not traverse"),
            ("/s", "a\0b", "null byte"),
        ] {
            let e = merge_sub_path(base, sub).unwrap_err();
            assert!(e.contains(why), "{base:?} {sub:?}: {e}");
        }
    }

    #[test]
    fn requests_round_trip_and_carry_the_volume() {
        let volume = VolumeSource {
            pv_name: "pv-a".into(),
            driver: "d".into(),
            fs_type: "ext4".into(),
            mount_options: vec!["noatime".into()],
            read_only_only: false,
            volume_attributes: [("path".to_string(), "/share".to_string())].into(),
            secrets: [("token".to_string(), "s".to_string())].into(),
        };
        let target = MountTarget {
            mount_path: "/data".into(),
            sub_path: Some("team".into()),
            read_only: true,
        };
        let req = publish_request(&volume, &target).unwrap();
        assert!(req.volume_id.starts_with("pv-a-") && req.volume_id.len() == 11);
        assert_eq!(req.target_path, "/data");
        assert_eq!(req.volume_context["path"], "/share/team");
        assert!(req.readonly);
        let back = decode_request(&encode_request(&req)).unwrap();
        assert_eq!(back, req);
        assert!(decode_request("!!").unwrap_err().contains("decode"));
        let other = publish_request(&volume, &target).unwrap();
        assert_ne!(other.volume_id, req.volume_id, "a new volume id per mount");
    }
}
