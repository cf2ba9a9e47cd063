//! Server-side apply of multi-document YAML, the way `kubectl apply --server-side` does it:
//! every document in order, `List` kinds expanded, CRDs waited for until Established (and
//! served) before the next document, so a file with a CRD and objects of that kind works.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{self, ApiCapabilities, ApiResource, Scope};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Options of [`apply_str`].
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Namespace for namespaced objects that name none.
    pub default_namespace: String,
    /// Field manager of the apply.
    pub field_manager: String,
    /// How long to wait for each CRD to become Established and discoverable.
    pub crd_timeout: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            default_namespace: "default".into(),
            field_manager: "kube-harness".into(),
            crd_timeout: Duration::from_secs(30),
        }
    }
}

/// The documents of a multi-document YAML text as JSON values; empty documents are skipped and
/// `kind: *List` documents are expanded into their items.
pub fn parse_documents(yaml: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| Error::Manifest {
            index,
            message: format!("invalid YAML: {e}"),
        })?;
        match value {
            serde_json::Value::Null => continue,
            serde_json::Value::Object(ref map) => {
                let kind = map.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
                if kind.ends_with("List") && map.get("items").is_some_and(|i| i.is_array()) {
                    out.extend(map["items"].as_array().into_iter().flatten().cloned());
                } else {
                    out.push(value);
                }
            }
            other => {
                return Err(Error::Manifest {
                    index,
                    message: format!("expected a mapping, got {other}"),
                });
            }
        }
    }
    Ok(out)
}

/// Applies a YAML file; see [`apply_str`].
pub async fn apply_file(
    client: &kube::Client,
    path: &Path,
    opts: &ApplyOptions,
) -> Result<Vec<DynamicObject>> {
    let yaml = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    apply_str(client, &yaml, opts).await
}

/// Server-side applies each document (force, so the harness wins conflicts) and returns what the
/// server stored. Objects with only `metadata.generateName` are created instead.
pub async fn apply_str(
    client: &kube::Client,
    yaml: &str,
    opts: &ApplyOptions,
) -> Result<Vec<DynamicObject>> {
    let docs = parse_documents(yaml)?;
    let mut applied = Vec::with_capacity(docs.len());
    for (index, doc) in docs.into_iter().enumerate() {
        let obj: DynamicObject =
            serde_json::from_value(doc.clone()).map_err(|e| Error::Manifest {
                index,
                message: format!("not a Kubernetes object: {e}"),
            })?;
        let types = obj.types.as_ref().ok_or_else(|| Error::Manifest {
            index,
            message: "apiVersion and kind are required".into(),
        })?;
        let gvk = GroupVersionKind::try_from(types).map_err(|e| Error::Manifest {
            index,
            message: format!("bad apiVersion {:?}: {e}", types.api_version),
        })?;
        let (ar, caps) = resolve_kind(client, &gvk, opts.crd_timeout)
            .await
            .map_err(|e| Error::Manifest {
                index,
                message: format!("{}/{}: {e}", types.api_version, types.kind),
            })?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = obj
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| opts.default_namespace.clone());
                Api::namespaced_with(client.clone(), &ns, &ar)
            }
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let stored = match (&obj.metadata.name, &obj.metadata.generate_name) {
            (Some(name), _) => {
                let pp = PatchParams::apply(&opts.field_manager).force();
                api.patch(name, &pp, &Patch::Apply(&doc)).await?
            }
            (None, Some(_)) => api.create(&PostParams::default(), &obj).await?,
            (None, None) => {
                return Err(Error::Manifest {
                    index,
                    message: "metadata.name or generateName is required".into(),
                });
            }
        };
        if gvk.group == "apiextensions.k8s.io" && gvk.kind == "CustomResourceDefinition" {
            let name = stored.metadata.name.clone().unwrap_or_default();
            wait_crd_established(client, &name, opts.crd_timeout).await?;
        }
        applied.push(stored);
    }
    Ok(applied)
}

/// Finds the API resource for `gvk`. A kind that a CRD in the cluster defines may not be in
/// discovery yet (just created); that is retried until `timeout`. Any other unknown kind fails at
/// once.
async fn resolve_kind(
    client: &kube::Client,
    gvk: &GroupVersionKind,
    timeout: Duration,
) -> std::result::Result<(ApiResource, ApiCapabilities), kube::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match discovery::pinned_kind(client, gvk).await {
            Ok(found) => return Ok(found),
            Err(e) if Instant::now() < deadline && crd_defines(client, gvk).await => {
                tracing::debug!(?gvk, error = %e, "kind not discoverable yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a CRD in the cluster defines `gvk` (served).
async fn crd_defines(client: &kube::Client, gvk: &GroupVersionKind) -> bool {
    if gvk.group.is_empty() || !gvk.group.contains('.') {
        return false;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let Ok(list) = crds.list(&Default::default()).await else {
        return false;
    };
    list.items.iter().any(|crd| {
        crd.spec.group == gvk.group
            && crd.spec.names.kind == gvk.kind
            && crd
                .spec
                .versions
                .iter()
                .any(|v| v.name == gvk.version && v.served)
    })
}

/// Waits until CRD `name` has condition Established=True and all its served versions are
/// discoverable.
pub async fn wait_crd_established(
    client: &kube::Client,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let crd = loop {
        let crd = crds.get(name).await?;
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            break crd;
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("CRD {name} to be Established"),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for v in crd.spec.versions.iter().filter(|v| v.served) {
        let gvk = GroupVersionKind::gvk(&crd.spec.group, &v.name, &crd.spec.names.kind);
        let left = deadline.saturating_duration_since(Instant::now());
        resolve_kind(client, &gvk, left)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("{}/{} {} in discovery", gvk.group, gvk.version, gvk.kind),
                after: timeout,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml_with_lists_and_empty_documents() {
        let yaml = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n- {apiVersion: v1, kind: Secret, metadata: {name: c}}\n";
        let docs = parse_documents(yaml).unwrap();
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn rejects_scalars_and_broken_yaml_with_the_document_index() {
        match parse_documents("a: 1\n---\njust text\n") {
            Err(Error::Manifest { index: 1, .. }) => {}
            other => panic!("expected an error for document 1, got {other:?}"),
        }
        assert!(matches!(
            parse_documents("a: [1\n"),
            Err(Error::Manifest { index: 0, .. })
        ));
    }
}
