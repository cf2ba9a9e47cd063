//! How the claim engine (`sandbox-core`) sees a Sandbox CR, for every adapter that claims
//! Sandbox CRs (the controller's SandboxClaim reconciler, the manager's Kubernetes backend):
//! pick facts from the state projection and the lock annotation, readiness facts from the
//! status, and where its runtime listens.

use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use sandbox_core::{ClaimableSandbox, PickFacts, ReadinessFacts};

use crate::keys::*;
use crate::state::{SandboxState, is_ready, sandbox_state};
use crate::types::{Sandbox, SandboxPhase, condition};

fn pod_ip(s: &Sandbox) -> Option<&str> {
    s.status
        .as_ref()
        .and_then(|st| st.pod_info.as_ref())
        .and_then(|p| p.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

fn annotation<'a>(s: &'a Sandbox, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

impl ClaimableSandbox for Sandbox {
    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }

    fn version(&self) -> Option<u64> {
        self.metadata.resource_version.as_deref()?.parse().ok()
    }

    fn pick_facts(&self, now: SystemTime) -> PickFacts<'_> {
        let now = Timestamp::try_from(now).unwrap_or_else(|_| Timestamp::now());
        PickFacts {
            available: sandbox_state(self, now) == SandboxState::Available,
            locked: annotation(self, ANNOTATION_LOCK).is_some(),
            created: self.metadata.creation_timestamp.is_some(),
            has_address: pod_ip(self).is_some(),
            revision: self
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_TEMPLATE_HASH))
                .map(String::as_str),
        }
    }

    /// Observed at its generation, Running and Ready with a pod IP is ready; deleting, a
    /// terminal phase or `Ready=False/StartContainerFailed` never will be.
    fn readiness(&self) -> ReadinessFacts {
        let status = self.status.as_ref();
        let phase = status.and_then(|s| s.known_phase());
        let cannot_start = status
            .into_iter()
            .flat_map(|s| &s.conditions)
            .find(|c| {
                c.type_ == condition::READY
                    && c.status == "False"
                    && c.reason.as_deref() == Some(condition::REASON_START_CONTAINER_FAILED)
            })
            .map(|c| c.message.clone().unwrap_or_default());
        ReadinessFacts {
            deleting: self.metadata.deletion_timestamp.is_some(),
            ended: phase
                .filter(|p| p.is_terminal())
                .map(|p| p.as_str().to_string()),
            cannot_start,
            observed: status.is_some_and(|s| s.observed_generation == self.metadata.generation),
            running: phase == Some(SandboxPhase::Running),
            ready: is_ready(self),
            has_address: pod_ip(self).is_some(),
        }
    }

    /// Annotation `agents.kruise.io/runtime-url`, else the legacy `envd-url`, else
    /// `http://<pod IP>:49983` (IPv6 bracketed).
    fn runtime_url(&self) -> Option<String> {
        if let Some(url) = annotation(self, ANNOTATION_RUNTIME_URL)
            .or_else(|| annotation(self, ANNOTATION_ENVD_URL))
        {
            return Some(url.to_string());
        }
        let ip = pod_ip(self)?;
        Some(if ip.contains(':') {
            format!("http://[{ip}]:{RUNTIME_PORT}")
        } else {
            format!("http://{ip}:{RUNTIME_PORT}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Condition, PodInfo, SandboxStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use sandbox_core::{Candidates, Readiness};

    fn pool_sbx(name: &str, hash: &str, ready: bool, locked: bool) -> Sandbox {
        let mut s = Sandbox::new(name, Default::default());
        s.metadata.namespace = Some("ns".into());
        s.metadata.creation_timestamp = Some(Time(Timestamp::now()));
        s.metadata.resource_version = Some("7".into());
        s.metadata.labels = Some([(LABEL_TEMPLATE_HASH.to_string(), hash.to_string())].into());
        if locked {
            s.metadata.annotations = Some([(ANNOTATION_LOCK.to_string(), "x".to_string())].into());
        }
        s.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "agents.kruise.io/v1alpha1".into(),
            kind: "SandboxSet".into(),
            name: "p".into(),
            uid: "set".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        s.status = Some(SandboxStatus {
            phase: Some("Running".into()),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            pod_info: Some(PodInfo {
                pod_ip: Some("127.0.1.9".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        s
    }

    #[test]
    fn candidates_skip_locked_and_unready_and_prefer_current_revision() {
        let pool = vec![
            pool_sbx("a", "old", true, false),
            pool_sbx("b", "new", true, false),
            pool_sbx("c", "new", true, true),
            pool_sbx("d", "new", false, false),
            pool_sbx("e", "new", true, false),
        ];
        let now = SystemTime::now();
        let keys = |start| -> Vec<String> {
            Candidates::new(pool.clone(), Some("new"), now, start)
                .keys()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(keys(0), ["ns/b", "ns/e", "ns/a"]);
        assert_eq!(keys(1), ["ns/e", "ns/b", "ns/a"]);
        let mut no_ip = pool_sbx("f", "new", true, false);
        no_ip.status.as_mut().unwrap().pod_info = None;
        assert!(!no_ip.pick_facts(now).offerable());
        let mut unborn = pool_sbx("g", "new", true, false);
        unborn.metadata.creation_timestamp = None;
        assert!(!unborn.pick_facts(now).offerable());
        assert_eq!(pool[0].version(), Some(7));
    }

    #[test]
    fn created_sandbox_readiness_verdicts() {
        let verdict = |s: &Sandbox| s.readiness().verdict();
        let mut s = pool_sbx("n", "h", true, false);
        s.metadata.generation = Some(2);
        s.status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(verdict(&s), Readiness::Ready);
        // Not yet: an older generation observed, not Ready, no IP, still Pending.
        let mut stale = s.clone();
        stale.status.as_mut().unwrap().observed_generation = Some(1);
        assert_eq!(verdict(&stale), Readiness::NotYet);
        let mut unready = pool_sbx("n", "h", false, false);
        unready.status.as_mut().unwrap().observed_generation = None;
        assert_eq!(verdict(&unready), Readiness::NotYet);
        let mut no_ip = s.clone();
        no_ip.status.as_mut().unwrap().pod_info = None;
        assert_eq!(verdict(&no_ip), Readiness::NotYet);
        let mut pending = s.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(verdict(&pending), Readiness::NotYet);
        let mut fresh = s.clone();
        fresh.status = None;
        assert_eq!(verdict(&fresh), Readiness::NotYet);
        // Never: terminal, deleting, or a container that cannot start.
        let mut failed = s.clone();
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        assert_eq!(
            verdict(&failed),
            Readiness::Never("sandbox ended Failed".into())
        );
        let mut deleting = s.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(matches!(verdict(&deleting), Readiness::Never(_)));
        let mut crashing = unready.clone();
        let c = &mut crashing.status.as_mut().unwrap().conditions[0];
        c.reason = Some("StartContainerFailed".into());
        c.message = Some("back-off".into());
        assert_eq!(
            verdict(&crashing),
            Readiness::Never("a container cannot start: back-off".into())
        );
    }

    #[test]
    fn runtime_url_prefers_annotations_then_the_pod_ip() {
        let mut s = pool_sbx("n", "h", true, false);
        assert_eq!(s.runtime_url().as_deref(), Some("http://127.0.1.9:49983"));
        s.status.as_mut().unwrap().pod_info.as_mut().unwrap().pod_ip = Some("fd00::7".into());
        assert_eq!(s.runtime_url().as_deref(), Some("http://[fd00::7]:49983"));
        s.metadata.annotations =
            Some([(ANNOTATION_ENVD_URL.to_string(), "http://envd:1".to_string())].into());
        assert_eq!(s.runtime_url().as_deref(), Some("http://envd:1"));
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_RUNTIME_URL.into(), "http://rt:2".into());
        assert_eq!(s.runtime_url().as_deref(), Some("http://rt:2"));
        s.metadata.annotations = None;
        s.status = None;
        assert_eq!(s.runtime_url(), None);
    }
}
