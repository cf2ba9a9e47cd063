//! Runtime injection: merges the per-runtime templates of ConfigMap `sandbox-injection-config`
//! into a pod spec, with upstream's conflict rules (see docs/controller.md):
//! - order is `agent-runtime`, then `csi`, then other runtimes in declaration order;
//! - `agent-runtime` and `csi` are skipped when one of their sidecar names already exists in the
//!   pod; `agent-runtime` merges an exec postStart as `injected -- user`, keeps a non-exec user
//!   hook, and appends env/mounts/volumes without dedup; `csi` dedups env, mounts and volumes by
//!   name;
//! - any other runtime fails on a container or volume name conflict and never overrides a label or
//!   annotation the user set.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sandbox_api::keys::{RUNTIME_AGENT, RUNTIME_CSI};
use serde::Deserialize;

/// One value of the ConfigMap (`data[<runtime>]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InjectionTemplate {
    #[serde(default)]
    pub main_container: Option<Container>,
    #[serde(default)]
    pub csi_sidecar: Vec<Container>,
    #[serde(default)]
    pub volume: Vec<Volume>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectionError {
    #[error("injection template {0} not found")]
    NotFound(String),
    #[error("injection template {name} is not valid JSON: {reason}")]
    Invalid { name: String, reason: String },
    #[error("failed to inject runtime {name}: inject conflicting with {what}")]
    Conflict { name: String, what: String },
    #[error("failed to inject runtime {0}: the pod has no containers")]
    NoMainContainer(String),
}

/// Orders declared runtimes: agent-runtime, csi, then the rest as declared (deduplicated).
pub fn injection_order(declared: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for fixed in [RUNTIME_AGENT, RUNTIME_CSI] {
        if declared.iter().any(|d| d == fixed) {
            out.push(fixed.to_string());
        }
    }
    for d in declared {
        if !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

/// Parses the template of `name` from the ConfigMap data (`None` = ConfigMap missing).
pub fn template_for(
    data: Option<&BTreeMap<String, String>>,
    name: &str,
) -> Result<InjectionTemplate, InjectionError> {
    let raw = data
        .and_then(|d| d.get(name))
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| InjectionError::NotFound(name.to_string()))?;
    serde_json::from_str(raw).map_err(|e| InjectionError::Invalid {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// Injects every declared runtime into `meta`/`spec`.
pub fn inject_runtimes(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    declared: &[String],
    data: Option<&BTreeMap<String, String>>,
) -> Result<(), InjectionError> {
    for name in injection_order(declared) {
        let t = template_for(data, &name)?;
        match name.as_str() {
            RUNTIME_AGENT => inject_agent_runtime(spec, &t, &name)?,
            RUNTIME_CSI => inject_csi(spec, &t, &name)?,
            _ => inject_generic(meta, spec, &t, &name)?,
        }
    }
    Ok(())
}

fn has_container(spec: &PodSpec, name: &str) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == name)
}

fn sidecar_already_present(spec: &PodSpec, t: &InjectionTemplate) -> bool {
    t.csi_sidecar.iter().any(|c| has_container(spec, &c.name))
}

fn exec_command(h: &LifecycleHandler) -> Option<&Vec<String>> {
    h.exec
        .as_ref()
        .and_then(|e| e.command.as_ref())
        .filter(|c| !c.is_empty())
}

fn inject_agent_runtime(
    spec: &mut PodSpec,
    t: &InjectionTemplate,
    name: &str,
) -> Result<(), InjectionError> {
    if sidecar_already_present(spec, t) {
        return Ok(());
    }
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .extend(t.csi_sidecar.iter().cloned());
    let main = spec
        .containers
        .first_mut()
        .ok_or_else(|| InjectionError::NoMainContainer(name.into()))?;
    if let Some(inj) = &t.main_container {
        let injected = inj.lifecycle.as_ref().and_then(|l| l.post_start.as_ref());
        if let Some(injected) = injected.filter(|h| exec_command(h).is_some()) {
            let lifecycle = main.lifecycle.get_or_insert_with(Default::default);
            match lifecycle.post_start.as_mut() {
                None => lifecycle.post_start = Some(injected.clone()),
                Some(user) => {
                    if let Some(user_cmd) = exec_command(user).cloned() {
                        let mut cmd = exec_command(injected).cloned().unwrap_or_default();
                        cmd.push("--".into());
                        cmd.extend(user_cmd);
                        user.exec.as_mut().expect("exec present").command = Some(cmd);
                    }
                    // A non-exec user hook wins; the injected one is dropped.
                }
            }
        }
        main.env
            .get_or_insert_with(Vec::new)
            .extend(inj.env.iter().flatten().cloned());
        main.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(inj.volume_mounts.iter().flatten().cloned());
    }
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(t.volume.iter().cloned());
    Ok(())
}

fn inject_csi(spec: &mut PodSpec, t: &InjectionTemplate, name: &str) -> Result<(), InjectionError> {
    if sidecar_already_present(spec, t) {
        return Ok(());
    }
    let main = spec
        .containers
        .first_mut()
        .ok_or_else(|| InjectionError::NoMainContainer(name.into()))?;
    if let Some(inj) = &t.main_container {
        let env = main.env.get_or_insert_with(Vec::new);
        for e in inj.env.iter().flatten() {
            if !env.iter().any(|x| x.name == e.name) {
                env.push(e.clone());
            }
        }
        let mounts = main.volume_mounts.get_or_insert_with(Vec::new);
        for m in inj.volume_mounts.iter().flatten() {
            if !mounts.iter().any(|x| x.name == m.name) {
                mounts.push(m.clone());
            }
        }
    }
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .extend(t.csi_sidecar.iter().cloned());
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for v in &t.volume {
        if !volumes.iter().any(|x| x.name == v.name) {
            volumes.push(v.clone());
        }
    }
    Ok(())
}

fn inject_generic(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    t: &InjectionTemplate,
    name: &str,
) -> Result<(), InjectionError> {
    let conflict = |what: String| InjectionError::Conflict {
        name: name.to_string(),
        what,
    };
    for c in t.init_containers.iter().chain(t.containers.iter()) {
        if has_container(spec, &c.name) {
            return Err(conflict(format!("container {}", c.name)));
        }
    }
    for v in &t.volume {
        if spec.volumes.iter().flatten().any(|x| x.name == v.name) {
            return Err(conflict(format!("volume {}", v.name)));
        }
    }
    let labels = meta.labels.get_or_insert_with(Default::default);
    for (k, v) in &t.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    for (k, v) in &t.annotations {
        annotations.entry(k.clone()).or_insert_with(|| v.clone());
    }
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .extend(t.init_containers.iter().cloned());
    spec.containers.extend(t.containers.iter().cloned());
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(t.volume.iter().cloned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(json: serde_json::Value) -> PodSpec {
        serde_json::from_value(json).unwrap()
    }

    fn data(entries: &[(&str, serde_json::Value)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn agent_cfg() -> serde_json::Value {
        json!({
            "mainContainer": {"name": "main", "env": [{"name": "ENVD_DIR", "value": "/mnt/envd"}],
                "volumeMounts": [{"name": "envd", "mountPath": "/mnt/envd"}],
                "lifecycle": {"postStart": {"exec": {"command": ["bash", "/mnt/envd/envd-run.sh"]}}}},
            "csiSidecar": [{"name": "runtime", "image": "agent-runtime:1", "restartPolicy": "Always"}],
            "volume": [{"name": "envd", "emptyDir": {}}]
        })
    }

    fn run(
        spec: &mut PodSpec,
        declared: &[&str],
        d: &BTreeMap<String, String>,
    ) -> Result<ObjectMeta, InjectionError> {
        let mut meta = ObjectMeta::default();
        let declared: Vec<String> = declared.iter().map(|s| s.to_string()).collect();
        inject_runtimes(&mut meta, spec, &declared, Some(d)).map(|_| meta)
    }

    #[test]
    fn order_is_fixed_for_known_runtimes() {
        let o = injection_order(&[
            "traffic-proxy".into(),
            "csi".into(),
            "agent-runtime".into(),
            "csi".into(),
        ]);
        assert_eq!(o, ["agent-runtime", "csi", "traffic-proxy"]);
    }

    #[test]
    fn agent_runtime_injects_sidecar_env_mounts_and_hook() {
        let mut spec = pod(json!({"containers": [{"name": "c", "image": "x"}]}));
        run(
            &mut spec,
            &["agent-runtime"],
            &data(&[("agent-runtime", agent_cfg())]),
        )
        .unwrap();
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "runtime");
        let c = &spec.containers[0];
        assert_eq!(c.env.as_ref().unwrap()[0].name, "ENVD_DIR");
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].name, "envd");
        let cmd = c
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .clone();
        assert_eq!(cmd.unwrap(), ["bash", "/mnt/envd/envd-run.sh"]);
        assert_eq!(spec.volumes.as_ref().unwrap()[0].name, "envd");
    }

    #[test]
    fn agent_runtime_merges_exec_post_start() {
        let mut spec = pod(
            json!({"containers": [{"name": "c", "lifecycle": {"postStart": {"exec": {"command": ["echo", "hi"]}}}}]}),
        );
        run(
            &mut spec,
            &["agent-runtime"],
            &data(&[("agent-runtime", agent_cfg())]),
        )
        .unwrap();
        let cmd = spec.containers[0]
            .lifecycle
            .clone()
            .unwrap()
            .post_start
            .unwrap()
            .exec
            .unwrap()
            .command
            .unwrap();
        assert_eq!(cmd, ["bash", "/mnt/envd/envd-run.sh", "--", "echo", "hi"]);
    }

    #[test]
    fn agent_runtime_keeps_non_exec_user_hook() {
        let mut spec = pod(
            json!({"containers": [{"name": "c", "lifecycle": {"postStart": {"httpGet": {"port": 80, "path": "/"}}}}]}),
        );
        run(
            &mut spec,
            &["agent-runtime"],
            &data(&[("agent-runtime", agent_cfg())]),
        )
        .unwrap();
        let hook = spec.containers[0]
            .lifecycle
            .clone()
            .unwrap()
            .post_start
            .unwrap();
        assert!(hook.exec.is_none());
        assert!(hook.http_get.is_some());
        // env is still appended
        assert_eq!(spec.containers[0].env.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn agent_runtime_skipped_when_sidecar_name_exists() {
        let mut spec = pod(
            json!({"initContainers": [{"name": "runtime", "image": "mine"}], "containers": [{"name": "c"}]}),
        );
        let before = spec.clone();
        run(
            &mut spec,
            &["agent-runtime"],
            &data(&[("agent-runtime", agent_cfg())]),
        )
        .unwrap();
        assert_eq!(spec, before);
    }

    #[test]
    fn agent_runtime_does_not_dedup_env_but_csi_does() {
        let mut spec = pod(
            json!({"containers": [{"name": "c", "env": [{"name": "ENVD_DIR", "value": "mine"}],
            "volumeMounts": [{"name": "envd", "mountPath": "/x"}]}], "volumes": [{"name": "envd", "emptyDir": {}}]}),
        );
        run(
            &mut spec,
            &["agent-runtime"],
            &data(&[("agent-runtime", agent_cfg())]),
        )
        .unwrap();
        assert_eq!(spec.containers[0].env.as_ref().unwrap().len(), 2);
        assert_eq!(spec.volumes.as_ref().unwrap().len(), 2);

        let csi = json!({"mainContainer": {"name": "m", "env": [{"name": "ENVD_DIR", "value": "csi"}, {"name": "CSI", "value": "1"}],
            "volumeMounts": [{"name": "envd", "mountPath": "/y"}]},
            "csiSidecar": [{"name": "csi-sidecar"}], "volume": [{"name": "envd", "emptyDir": {}}, {"name": "csi", "emptyDir": {}}]});
        let mut spec = pod(
            json!({"containers": [{"name": "c", "env": [{"name": "ENVD_DIR", "value": "mine"}],
            "volumeMounts": [{"name": "envd", "mountPath": "/x"}]}], "volumes": [{"name": "envd", "emptyDir": {}}]}),
        );
        run(&mut spec, &["csi"], &data(&[("csi", csi)])).unwrap();
        let env = spec.containers[0].env.clone().unwrap();
        assert_eq!(
            env.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["ENVD_DIR", "CSI"]
        );
        assert_eq!(env[0].value.as_deref(), Some("mine"));
        assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
        assert_eq!(
            spec.volumes
                .as_ref()
                .unwrap()
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["envd", "csi"]
        );
        assert_eq!(
            spec.init_containers.as_ref().unwrap()[0].name,
            "csi-sidecar"
        );
    }

    #[test]
    fn generic_conflicts_fail_and_user_metadata_wins() {
        let tp = json!({"containers": [{"name": "proxy"}], "initContainers": [{"name": "proxy-init"}],
            "volume": [{"name": "proxy-certs", "emptyDir": {}}], "labels": {"team": "injected", "mesh": "on"},
            "annotations": {"a": "injected"}});
        let d = data(&[("traffic-proxy", tp)]);
        let mut spec = pod(json!({"containers": [{"name": "c"}, {"name": "proxy"}]}));
        let err = run(&mut spec, &["traffic-proxy"], &d).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to inject runtime traffic-proxy: inject conflicting with container proxy"
        );
        let mut spec = pod(
            json!({"containers": [{"name": "c"}], "volumes": [{"name": "proxy-certs", "emptyDir": {}}]}),
        );
        assert!(matches!(
            run(&mut spec, &["traffic-proxy"], &d),
            Err(InjectionError::Conflict { .. })
        ));

        let mut spec = pod(json!({"containers": [{"name": "c"}]}));
        let mut meta = ObjectMeta {
            labels: Some([("team".to_string(), "user".to_string())].into()),
            ..Default::default()
        };
        inject_runtimes(&mut meta, &mut spec, &["traffic-proxy".into()], Some(&d)).unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "user");
        assert_eq!(labels["mesh"], "on");
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(spec.init_containers.unwrap()[0].name, "proxy-init");
    }

    #[test]
    fn missing_or_bad_templates_fail() {
        let mut spec = pod(json!({"containers": [{"name": "c"}]}));
        let err = inject_runtimes(
            &mut ObjectMeta::default(),
            &mut spec,
            &["agent-runtime".into()],
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "injection template agent-runtime not found"
        );
        let d: BTreeMap<String, String> = [("csi".to_string(), "{not json".to_string())].into();
        assert!(matches!(
            run(&mut spec, &["csi"], &d),
            Err(InjectionError::Invalid { .. })
        ));
        let d: BTreeMap<String, String> = [("csi".to_string(), "".to_string())].into();
        assert!(matches!(
            run(&mut spec, &["csi"], &d),
            Err(InjectionError::NotFound(_))
        ));
    }
}
