//! The simulated node as the checkpoint controller that upstream leaves out of tree ("external
//! checkpoint controller"): it fulfils `agents.kruise.io/v1alpha1` Checkpoint CRs for the pods
//! it runs by copying the pod's work directory to `<root>/checkpoints/<checkpointId>`, and a pod
//! that carries annotation `agents.kruise.io/restore-from: <checkpointId>` starts with that copy
//! in its work directory. A deleted Checkpoint's copy is removed. On (`NodeSimConfig::
//! checkpoints`) only where the Checkpoint CRD is installed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::Shared;

/// Pod (and Sandbox) annotation naming the checkpoint a new pod starts from.
pub const RESTORE_FROM: &str = "agents.kruise.io/restore-from";

/// Where checkpoint copies are kept.
pub(crate) fn store(root: &Path) -> PathBuf {
    root.join("checkpoints")
}

/// The copy of checkpoint `id` (`None`: not an id this simulator makes, so no path outside the
/// store is ever formed from it).
fn checkpoint_dir(root: &Path, id: &str) -> Option<PathBuf> {
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| store(root).join(id))
}

fn checkpoint_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("agents.kruise.io", "v1alpha1", "Checkpoint"),
        "checkpoints",
    )
}

/// A checkpoint id: 20 lower-case letters and digits.
fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char)
        .collect()
}

/// Copies the tree at `from` into `to` (created): files, directories and symbolic links.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Fills a new pod's work directory from the checkpoint its annotation names (nothing when the
/// annotation is absent; an error when it names a checkpoint this node does not have).
pub(crate) fn restore(
    root: &Path,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    workdir: &Path,
) -> Result<(), String> {
    let Some(id) = annotations.and_then(|a| a.get(RESTORE_FROM)) else {
        return Ok(());
    };
    let Some(src) = checkpoint_dir(root, id) else {
        return Err(format!("{RESTORE_FROM}: {id:?} is not a checkpoint id"));
    };
    if !src.is_dir() {
        return Err(format!("checkpoint {id} is not on this node"));
    }
    copy_tree(&src, workdir).map_err(|e| format!("restore checkpoint {id}: {e}"))
}

/// Watches Checkpoints until the simulator stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let ar = checkpoint_resource();
    let api: Api<DynamicObject> = match &shared.cfg.namespace {
        Some(ns) => Api::namespaced_with(shared.client.clone(), ns, &ar),
        None => Api::all_with(shared.client.clone(), &ar),
    };
    let mut handled: HashSet<String> = HashSet::new();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(cp) | watcher::Event::InitApply(cp)) => {
                let uid = cp.metadata.uid.clone().unwrap_or_default();
                if !handled.contains(&uid) && fulfil(&shared, &ar, &cp).await {
                    handled.insert(uid);
                }
            }
            Ok(watcher::Event::Delete(cp)) => {
                handled.remove(cp.metadata.uid.as_deref().unwrap_or_default());
                if let Some(dir) = cp.data["status"]["checkpointId"]
                    .as_str()
                    .and_then(|id| checkpoint_dir(&shared.root, id))
                {
                    let _ = tokio::fs::remove_dir_all(dir).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "checkpoint watch failed; retrying"),
        }
    }
}

/// Takes the checkpoint if its pod runs here and it is not finished; true once it is handled.
async fn fulfil(shared: &Shared, ar: &ApiResource, cp: &DynamicObject) -> bool {
    let phase = cp.data["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        return true;
    }
    let ns = cp.metadata.namespace.clone().unwrap_or_default();
    let spec = &cp.data["spec"];
    let Some(pod) = spec["podName"]
        .as_str()
        .or_else(|| spec["sandboxName"].as_str())
    else {
        return set_status(
            shared,
            ar,
            cp,
            json!({"phase": "Failed", "message": "spec.podName is required"}),
        )
        .await;
    };
    let workdir = {
        let reg = shared.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.values()
            .find(|p| p.namespace == ns && p.name == pod)
            .map(|p| p.workdir.clone())
    };
    // Another node's pod (or one not started yet: a later event retries).
    let Some(workdir) = workdir else {
        return false;
    };
    let id = new_id();
    let dst = store(&shared.root).join(&id);
    let copied = tokio::task::spawn_blocking(move || copy_tree(&workdir, &dst))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let status = match copied {
        Ok(()) => json!({
            "phase": "Succeeded",
            "checkpointId": id,
            "completionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }),
        Err(e) => json!({"phase": "Failed", "message": format!("copy: {e}")}),
    };
    set_status(shared, ar, cp, status).await
}

async fn set_status(shared: &Shared, ar: &ApiResource, cp: &DynamicObject, status: Value) -> bool {
    let ns = cp.metadata.namespace.clone().unwrap_or_default();
    let name = cp.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(shared.client.clone(), &ns, ar);
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => true,
        Err(e) => {
            tracing::warn!(%ns, %name, error = %e, "checkpoint status not written");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_and_restored_from_its_annotation() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("pod");
        std::fs::create_dir_all(pod.join("a/b")).unwrap();
        std::fs::write(pod.join("a/b/f.txt"), "data").unwrap();
        std::os::unix::fs::symlink("a/b/f.txt", pod.join("link")).unwrap();
        copy_tree(&pod, &store(root.path()).join("abc123")).unwrap();

        let fresh = root.path().join("fresh");
        let ann = [(RESTORE_FROM.to_string(), "abc123".to_string())].into();
        restore(root.path(), Some(&ann), &fresh).unwrap();
        assert_eq!(
            std::fs::read_to_string(fresh.join("a/b/f.txt")).unwrap(),
            "data"
        );
        assert_eq!(
            std::fs::read_link(fresh.join("link")).unwrap(),
            Path::new("a/b/f.txt")
        );

        restore(root.path(), None, &root.path().join("none")).unwrap();
        assert!(!root.path().join("none").exists());
        let missing = [(RESTORE_FROM.to_string(), "nothere".to_string())].into();
        assert!(restore(root.path(), Some(&missing), &fresh).is_err());
        let bad = [(RESTORE_FROM.to_string(), "../x".to_string())].into();
        assert!(restore(root.path(), Some(&bad), &fresh).is_err());
    }
}
