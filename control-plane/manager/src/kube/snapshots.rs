//! Snapshots on Kubernetes, as upstream's `clone.go` makes them: a snapshot is a `Checkpoint` of
//! the sandbox's pod (fulfilled by the cluster's checkpoint controller, which upstream leaves
//! out of tree; the test harness's node simulator plays it) plus a `SandboxTemplate` of the same
//! name, owned by the Checkpoint, holding what the sandbox was made from. Its id is the
//! checkpoint's `status.checkpointId`. A create naming a snapshot (by id or name) clones it: a
//! new Sandbox from that template, annotated `agents.kruise.io/restore-from: <checkpointId>` so
//! its pod starts from the checkpoint. Deleting the Checkpoint deletes the template with it
//! (garbage collection).

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use sandbox_api::keys::*;
use sandbox_api::{
    Checkpoint, CheckpointSpec, Sandbox, SandboxSpec, SandboxTemplate, SandboxTemplateSpec,
};
use serde_json::json;

use super::claim::is_status;
use super::record::ANNOTATION_TEAM_ID;
use crate::model::{BackendError, BackendResult, Caller, SandboxId, SandboxRecord, SnapshotRecord};

/// The snapshot's names (a JSON array of strings; E2B names may hold `/` and `:`).
pub const ANNOTATION_SNAPSHOT_NAMES: &str = "e2b.agents.kruise.io/snapshot-names";
/// When the snapshot was asked for, to the nanosecond (creationTimestamp has whole seconds,
/// and snapshots list newest first).
pub const ANNOTATION_SNAPSHOT_CREATED: &str = "e2b.agents.kruise.io/snapshot-created-at";
/// The template the snapshotted sandbox came from.
pub const ANNOTATION_SNAPSHOT_TEMPLATE: &str = "e2b.agents.kruise.io/snapshot-template-id";

/// How long a snapshot waits for the checkpoint controller.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::Internal(e.to_string())
}

/// A finished checkpoint as a snapshot (`None` while it is not Succeeded).
pub fn record_of(cp: &Checkpoint) -> Option<SnapshotRecord> {
    let st = cp.status.as_ref()?;
    if st.phase.as_deref() != Some("Succeeded") {
        return None;
    }
    let id = st.checkpoint_id.clone().filter(|i| !i.is_empty())?;
    let ann = |k: &str| cp.annotations().get(k).cloned();
    Some(SnapshotRecord {
        id,
        names: ann(ANNOTATION_SNAPSHOT_NAMES)
            .and_then(|n| serde_json::from_str(&n).ok())
            .unwrap_or_default(),
        team_id: ann(ANNOTATION_TEAM_ID).unwrap_or_default(),
        owner_key_id: ann(ANNOTATION_OWNER).unwrap_or_default(),
        sandbox_id: ann(ANNOTATION_SANDBOX_ID)
            .and_then(|s| SandboxId::parse(&s))
            .unwrap_or_else(|| SandboxId::parse("unknown").expect("valid id")),
        template_id: ann(ANNOTATION_SNAPSHOT_TEMPLATE).unwrap_or_default(),
        created_at: ann(ANNOTATION_SNAPSHOT_CREATED)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .or_else(|| cp.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or_else(Timestamp::now),
    })
}

/// The snapshots of the manager's namespace (or of all).
pub struct Snapshots {
    client: Client,
    namespace: Option<String>,
}

impl Snapshots {
    pub fn new(client: Client, namespace: Option<String>) -> Self {
        Snapshots { client, namespace }
    }

    fn all(&self) -> Api<Checkpoint> {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Every finished snapshot the caller may see.
    pub async fn list(&self, caller: &Caller) -> BackendResult<Vec<(Checkpoint, SnapshotRecord)>> {
        let params = ListParams::default().labels(LABEL_CHECKPOINT_ID);
        let cps = self.all().list(&params).await.map_err(internal)?;
        Ok(cps
            .items
            .into_iter()
            .filter(|cp| cp.metadata.deletion_timestamp.is_none())
            .filter_map(|cp| record_of(&cp).map(|r| (cp, r)))
            .filter(|(_, r)| caller.sees(&r.team_id))
            .collect())
    }

    /// The caller's snapshot with id or name `key` (the newest, for a name given twice).
    pub async fn find(
        &self,
        caller: &Caller,
        key: &str,
    ) -> BackendResult<Option<(Checkpoint, SnapshotRecord)>> {
        let mut found: Vec<_> = self
            .list(caller)
            .await?
            .into_iter()
            .filter(|(_, r)| r.id == key || r.names.iter().any(|n| n == key))
            .collect();
        found.sort_by_key(|(_, r)| std::cmp::Reverse(r.created_at));
        Ok(found.into_iter().next())
    }

    /// Snapshots sandbox `s` (`rec` as the API shows it; its template resolved to `template`):
    /// a Checkpoint, the SandboxTemplate beside it, then a wait for the checkpoint controller.
    /// On failure the Checkpoint is deleted (the template with it).
    pub async fn take(
        &self,
        caller: &Caller,
        s: &Sandbox,
        rec: &SandboxRecord,
        template: SandboxTemplateSpec,
        name: Option<String>,
    ) -> BackendResult<SnapshotRecord> {
        let ns = s.namespace().unwrap_or_default();
        let api: Api<Checkpoint> = Api::namespaced(self.client.clone(), &ns);
        let mut cp = Checkpoint::new(
            "",
            CheckpointSpec {
                sandbox_name: Some(s.name_any()),
                pod_name: Some(s.name_any()),
                keep_running: Some(true),
                persistent_contents: vec!["filesystem".into()],
                ttl_after_finished: None,
            },
        );
        cp.metadata.name = None;
        cp.metadata.generate_name = Some(format!("{}-", s.name_any()));
        let names: Vec<String> = name.into_iter().collect();
        let mut ann = vec![
            (ANNOTATION_OWNER, caller.key_id.clone()),
            (ANNOTATION_TEAM_ID, caller.team.id.clone()),
            (ANNOTATION_SANDBOX_ID, rec.id.to_string()),
            (ANNOTATION_SNAPSHOT_TEMPLATE, rec.template_id.clone()),
            (ANNOTATION_SNAPSHOT_CREATED, Timestamp::now().to_string()),
            (
                ANNOTATION_SNAPSHOT_NAMES,
                serde_json::to_string(&names).map_err(internal)?,
            ),
        ];
        if let Some(init) = s.annotations().get(ANNOTATION_INIT_RUNTIME_REQUEST) {
            ann.push((ANNOTATION_INIT_RUNTIME_REQUEST, init.clone()));
        }
        cp.metadata.annotations = Some(ann.into_iter().map(|(k, v)| (k.into(), v)).collect());
        let cp = api
            .create(&PostParams::default(), &cp)
            .await
            .map_err(internal)?;
        let cp_name = cp.name_any();
        let tpl = SandboxTemplate {
            metadata: kube::api::ObjectMeta {
                name: Some(cp_name.clone()),
                namespace: Some(ns.clone()),
                owner_references: cp.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec: template,
        };
        let templates: Api<SandboxTemplate> = Api::namespaced(self.client.clone(), &ns);
        let finished = async {
            templates
                .create(&PostParams::default(), &tpl)
                .await
                .map_err(|e| internal(format!("snapshot template: {e}")))?;
            self.wait(&api, &cp_name).await
        };
        let rec = match finished.await {
            Ok(r) => r,
            Err(e) => {
                let _ = api.delete(&cp_name, &DeleteParams::default()).await;
                return Err(e);
            }
        };
        // Labelled with its id once it has one (upstream), so lookups select by label.
        let label = json!({"metadata": {"labels": {LABEL_CHECKPOINT_ID: rec.id}}});
        api.patch(&cp_name, &PatchParams::default(), &Patch::Merge(label))
            .await
            .map_err(internal)?;
        Ok(rec)
    }

    async fn wait(&self, api: &Api<Checkpoint>, name: &str) -> BackendResult<SnapshotRecord> {
        let deadline = tokio::time::Instant::now() + CHECKPOINT_WAIT;
        loop {
            let cp = api.get(name).await.map_err(internal)?;
            if let Some(r) = record_of(&cp) {
                return Ok(r);
            }
            let st = cp.status.as_ref();
            if st.and_then(|s| s.phase.as_deref()) == Some("Failed") {
                let why = st.and_then(|s| s.message.clone()).unwrap_or_default();
                return Err(internal(format!("checkpoint {name} failed: {why}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Unavailable {
                    message: format!(
                        "checkpoint {name} not taken within {CHECKPOINT_WAIT:?}: does the cluster run a checkpoint controller?"
                    ),
                    retry_after: Duration::from_secs(5),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes the caller's snapshot `key` (id or name); `false` when there is none.
    pub async fn delete(&self, caller: &Caller, key: &str) -> BackendResult<bool> {
        let Some((cp, _)) = self.find(caller, key).await? else {
            return Ok(false);
        };
        let api: Api<Checkpoint> =
            Api::namespaced(self.client.clone(), &cp.namespace().unwrap_or_default());
        match api
            .delete(&cp.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(internal(e)),
        }
    }

    /// The template a snapshot's clones are made from.
    pub async fn template(&self, cp: &Checkpoint) -> BackendResult<SandboxTemplate> {
        let api: Api<SandboxTemplate> =
            Api::namespaced(self.client.clone(), &cp.namespace().unwrap_or_default());
        api.get_opt(&cp.name_any())
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                BackendError::NotFound(format!("snapshot {} has no template", cp.name_any()))
            })
    }
}

/// A new sandbox cloned from snapshot `snapshot_id` (checkpoint `cp`, template `tpl`): the
/// template's pod, volumes and runtimes, `restore-from` the checkpoint, and the snapshot id as
/// its template.
pub fn clone_of(cp: &Checkpoint, tpl: &SandboxTemplate, snapshot_id: &str) -> Sandbox {
    let mut s = Sandbox::new(
        "",
        SandboxSpec {
            template: tpl.spec.template.clone(),
            volume_claim_templates: tpl.spec.volume_claim_templates.clone(),
            persistent_contents: tpl.spec.persistent_contents.clone(),
            runtimes: tpl.spec.runtimes.clone(),
            pause_strategy: tpl.spec.pause_strategy.clone(),
            ..Default::default()
        },
    );
    s.metadata.name = None;
    s.metadata.generate_name = Some(format!("{}-", cp.name_any()));
    s.metadata.namespace = cp.namespace();
    s.metadata.labels =
        Some([(LABEL_SANDBOX_TEMPLATE.to_string(), snapshot_id.to_string())].into());
    s.metadata.annotations =
        Some([(ANNOTATION_RESTORE_FROM.to_string(), snapshot_id.to_string())].into());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox_api::CheckpointStatus;

    fn checkpoint(phase: &str, id: Option<&str>) -> Checkpoint {
        let mut cp = Checkpoint::new("box-abc", CheckpointSpec::default());
        cp.metadata.namespace = Some("default".into());
        cp.metadata.annotations = Some(
            [
                (ANNOTATION_OWNER, "key1"),
                (ANNOTATION_TEAM_ID, "team1"),
                (ANNOTATION_SANDBOX_ID, "sbx123"),
                (ANNOTATION_SNAPSHOT_TEMPLATE, "base"),
                (ANNOTATION_SNAPSHOT_NAMES, r#"["proj/snap:v1"]"#),
                (
                    ANNOTATION_SNAPSHOT_CREATED,
                    "2026-12-06T05:00:00.123456789Z",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        cp.status = Some(CheckpointStatus {
            phase: Some(phase.into()),
            checkpoint_id: id.map(Into::into),
            ..Default::default()
        });
        cp
    }

    #[test]
    fn only_a_finished_checkpoint_is_a_snapshot() {
        assert!(record_of(&checkpoint("Creating", None)).is_none());
        assert!(record_of(&checkpoint("Failed", Some("x"))).is_none());
        assert!(record_of(&checkpoint("Succeeded", None)).is_none());
        let r = record_of(&checkpoint("Succeeded", Some("cp1"))).unwrap();
        assert_eq!(r.id, "cp1");
        assert_eq!(r.names, vec!["proj/snap:v1".to_string()]);
        assert_eq!(
            (r.team_id.as_str(), r.owner_key_id.as_str()),
            ("team1", "key1")
        );
        assert_eq!(r.sandbox_id.as_str(), "sbx123");
        assert_eq!(r.template_id, "base");
        assert_eq!(r.created_at.subsec_nanosecond(), 123_456_789);
    }

    #[test]
    fn a_clone_names_its_checkpoint_and_answers_to_the_snapshot() {
        let cp = checkpoint("Succeeded", Some("cp1"));
        let tpl = SandboxTemplate::new(
            "box-abc",
            SandboxTemplateSpec {
                template: Some(Default::default()),
                ..Default::default()
            },
        );
        let s = clone_of(&cp, &tpl, "cp1");
        assert_eq!(s.metadata.name, None);
        assert_eq!(s.metadata.generate_name.as_deref(), Some("box-abc-"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.annotations()[ANNOTATION_RESTORE_FROM], "cp1");
        assert_eq!(s.labels()[LABEL_SANDBOX_TEMPLATE], "cp1");
        assert!(s.spec.template.is_some());
    }
}
