//! How the claim engine (`sandbox-core`) sees a Sandbox CR, for every adapter that claims
//! Sandbox CRs (the controller's SandboxClaim reconciler, the manager's Kubernetes backend):
//! pick facts from the state projection and the lock annotation, readiness facts from the
//! status, and where its runtime listens.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use sandbox_core::{ClaimIdentity, ClaimableSandbox, PickFacts, ReadinessFacts};
use serde_json::{Value, json};

use crate::keys::*;
use crate::state::{SandboxState, is_ready, sandbox_state};
use crate::types::{Sandbox, SandboxPhase, condition};

pub(crate) fn pod_ip(s: &Sandbox) -> Option<&str> {
    s.status
        .as_ref()
        .and_then(|st| st.pod_info.as_ref())
        .and_then(|p| p.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

pub(crate) fn annotation<'a>(s: &'a Sandbox, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// When the sandbox was taken (its `claim-timestamp` annotation, as every take writes it).
pub fn claimed_at(s: &Sandbox) -> Option<Timestamp> {
    annotation(s, ANNOTATION_CLAIM_TIMESTAMP)?.parse().ok()
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

    /// Observed at its generation, Running and Ready with a pod IP, and no in-place update under
    /// way (`InplaceUpdate=False/InplaceUpdating`), is ready; deleting, a terminal phase or
    /// `Ready=False/StartContainerFailed` never will be.
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
            updating: status.into_iter().flat_map(|s| &s.conditions).any(|c| {
                c.type_ == condition::INPLACE_UPDATE
                    && c.status == "False"
                    && c.reason.as_deref() == Some(condition::REASON_INPLACE_UPDATING)
            }),
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

/// What a take writes on a Sandbox, for every claimer (the controller's SandboxClaim reconciler,
/// the manager's Kubernetes backend): label `sandbox-claimed=true`; annotations `lock`, `owner`,
/// `claim-timestamp` and, when the runtime is to be initialised, `init-runtime-request` and
/// `runtime-access-token`; no owner references (so the SandboxSet replenishes); then the
/// claimer's own labels, annotations and spec fields. One write guarded by the resourceVersion
/// the candidate was read at ([`Take::patch`]), or the same marks on a sandbox created for the
/// claim ([`Take::apply_to_new`]).
#[derive(Debug, Clone)]
pub struct Take<'a> {
    pub identity: &'a ClaimIdentity,
    /// Annotation `agents.kruise.io/owner`: the claim's UID, or the manager's API key id.
    pub owner: &'a str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Spec fields, merged into `spec` (`null` removes one).
    pub spec: serde_json::Map<String, Value>,
}

impl<'a> Take<'a> {
    pub fn new(identity: &'a ClaimIdentity, owner: &'a str) -> Self {
        Take {
            identity,
            owner,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            spec: serde_json::Map::new(),
        }
    }

    fn metadata(&self) -> serde_json::Map<String, Value> {
        let id = self.identity;
        let claimed_at = Timestamp::try_from(id.claimed_at).unwrap_or_else(|_| Timestamp::now());
        let mut labels = serde_json::Map::new();
        labels.insert(LABEL_SANDBOX_CLAIMED.into(), json!("true"));
        for (k, v) in &self.labels {
            labels.insert(k.clone(), json!(v));
        }
        let mut ann = serde_json::Map::new();
        ann.insert(ANNOTATION_LOCK.into(), json!(id.lock));
        ann.insert(ANNOTATION_OWNER.into(), json!(self.owner));
        ann.insert(
            ANNOTATION_CLAIM_TIMESTAMP.into(),
            // RFC 3339 in UTC with milliseconds (upstream writes seconds; both parse alike),
            // so that sandboxes claimed within one second keep their order.
            json!(claimed_at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
        );
        if let Some(init) = &id.init {
            ann.insert(
                ANNOTATION_INIT_RUNTIME_REQUEST.into(),
                json!(init.to_json()),
            );
            ann.insert(
                ANNOTATION_RUNTIME_ACCESS_TOKEN.into(),
                json!(init.access_token),
            );
        }
        for (k, v) in &self.annotations {
            ann.insert(k.clone(), json!(v));
        }
        let mut md = serde_json::Map::new();
        md.insert("ownerReferences".into(), Value::Null);
        md.insert("labels".into(), Value::Object(labels));
        md.insert("annotations".into(), Value::Object(ann));
        md
    }

    /// JSON merge patch taking `sbx`, guarded by the resourceVersion it was read at: of two
    /// claimers only one can win.
    pub fn patch(&self, sbx: &Sandbox) -> Value {
        let mut md = self.metadata();
        md.insert(
            "resourceVersion".into(),
            json!(sbx.metadata.resource_version),
        );
        json!({"metadata": md, "spec": self.spec})
    }

    /// The same marks on a sandbox about to be created for the claim (no stock), which also gets
    /// annotation `sandbox-priority: "100"`.
    pub fn apply_to_new(&self, sbx: Sandbox) -> Result<Sandbox, serde_json::Error> {
        let mut doc = serde_json::to_value(sbx)?;
        merge(
            &mut doc,
            &json!({"metadata": self.metadata(), "spec": self.spec}),
        );
        let mut sbx: Sandbox = serde_json::from_value(doc)?;
        sbx.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_SANDBOX_PRIORITY.into(), "100".into());
        Ok(sbx)
    }
}

/// What a claim changes in place on the sandbox's first container (upstream's in-place update:
/// the SandboxClaim's `inplaceUpdate`, the manager's `image` / `cpu-request` / `cpu-limit`
/// keys). CPU changes only a request or limit the template already sets (non-zero); memory is
/// never resized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InPlaceChange {
    pub image: Option<String>,
    pub cpu_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
}

impl InPlaceChange {
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.cpu_request.is_none() && self.cpu_limit.is_none()
    }

    /// Applies the change to container 0 of `template`.
    pub fn apply(&self, template: &mut PodTemplateSpec) {
        let Some(c) = template
            .spec
            .as_mut()
            .and_then(|s| s.containers.first_mut())
        else {
            return;
        };
        if let Some(image) = self.image.as_ref().filter(|i| !i.is_empty()) {
            c.image = Some(image.clone());
        }
        let r = c.resources.get_or_insert_with(Default::default);
        let set_cpu = |target: &mut Option<BTreeMap<String, Quantity>>, cpu: &Option<Quantity>| {
            if let (Some(cpu), Some(t)) = (cpu, target.as_mut())
                && t.get("cpu").is_some_and(|q| !q.0.is_empty() && q.0 != "0")
            {
                t.insert("cpu".into(), cpu.clone());
            }
        };
        set_cpu(&mut r.requests, &self.cpu_request);
        set_cpu(&mut r.limits, &self.cpu_limit);
    }
}

/// A positive CPU quantity as Kubernetes writes one: a decimal number of cores, optionally in
/// millicores (`250m`, `0.5`, `2`); anything else (zero, negative, exponents, other suffixes)
/// is refused with the reason.
pub fn parse_cpu(v: &str) -> Result<Quantity, String> {
    let digits = v.strip_suffix('m').unwrap_or(v);
    let well_formed = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.matches('.').count() <= 1
        && !digits.starts_with('.')
        && !digits.ends_with('.');
    if !well_formed {
        return Err(format!("{v:?} is not a CPU quantity (like 500m or 2)"));
    }
    if digits.chars().all(|c| c == '0' || c == '.') {
        return Err(format!("{v:?} must be positive"));
    }
    Ok(Quantity(v.to_string()))
}

/// A container image reference (`[registry[:port]/]path[:tag][@digest]`): lower-case path
/// components of letters, digits and `._-`, a tag of up to 128 `[A-Za-z0-9_.-]`, an optional
/// `sha256:` digest; refused with the reason otherwise.
pub fn parse_image(v: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{v:?} is not an image reference: {why}"));
    if v.is_empty() || v.len() > 255 {
        return bad("empty or longer than 255 characters");
    }
    let (name, digest) = match v.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (v, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return bad("the digest must be sha256: and 64 hex digits");
        }
    }
    // A tag follows the last ':' after the last '/'.
    let (path, tag) = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || t.starts_with(['.', '-'])
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
    {
        return bad("bad tag");
    }
    let mut parts = path.split('/').peekable();
    let mut first = true;
    while let Some(part) = parts.next() {
        // The first of several components may be a registry host[:port] (may hold upper case).
        let registry =
            first && parts.peek().is_some() && (part.contains(['.', ':']) || part == "localhost");
        first = false;
        let ok = if registry {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        } else {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && !part.starts_with(['.', '_', '-'])
                && !part.ends_with(['.', '_', '-'])
        };
        if !ok {
            return bad("bad name component");
        }
    }
    Ok(v.to_string())
}

/// A new pool sandbox for `set` at `revision` (upstream `NewSandboxFromSandboxSet`):
/// `generateName: <set>-`, template metadata minus `agents.kruise.io/*` keys (except the two
/// preserved ones), pool labels, and a controller ownerRef to the set.
pub fn new_sandbox_from_set(set: &crate::SandboxSet, revision: &str) -> Sandbox {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use kube::Resource;

    let name = set.metadata.name.clone().unwrap_or_default();
    let mut generate_name = format!("{name}-");
    generate_name.truncate(58);
    let strip = |m: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        m.into_iter()
            .flatten()
            .filter(|(k, _)| {
                !k.starts_with(AGENTS_PREFIX)
                    || INTERNAL_KEYS_PRESERVED_ON_CREATION.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let tmeta = set.spec.template.as_ref().and_then(|t| t.metadata.as_ref());
    let mut labels = strip(tmeta.and_then(|m| m.labels.as_ref()));
    let annotations = strip(tmeta.and_then(|m| m.annotations.as_ref()));
    let template_name = set
        .spec
        .template_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_else(|| name.clone());
    labels.insert(LABEL_SANDBOX_POOL.into(), name.clone());
    labels.insert(LABEL_SANDBOX_TEMPLATE.into(), template_name);
    labels.insert(LABEL_SANDBOX_CLAIMED.into(), "false".into());
    labels.insert(LABEL_TEMPLATE_HASH.into(), revision.into());
    crate::Sandbox {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: crate::SandboxSet::api_version(&()).into_owned(),
                kind: crate::SandboxSet::kind(&()).into_owned(),
                name,
                uid: set.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: crate::SandboxSpec {
            persistent_contents: set.spec.persistent_contents.clone(),
            runtimes: set.spec.runtimes.clone(),
            pause_strategy: set.spec.pause_strategy.clone(),
            template_ref: set.spec.template_ref.clone(),
            template: set.spec.template.clone(),
            volume_claim_templates: set.spec.volume_claim_templates.clone(),
            ..Default::default()
        },
        status: None,
    }
}

/// The HTTP status of an apiserver answer (`None` when the request got no answer).
pub fn api_status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Whether the apiserver answered `e` with HTTP `code`.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    api_status(e) == Some(code)
}

/// A failed take patch, as the claim engine reads it (`TakeError::from_status`): every
/// `SandboxStore` over the apiserver maps its take's errors here.
pub fn take_error(e: kube::Error) -> sandbox_core::TakeError<kube::Error> {
    sandbox_core::TakeError::from_status(api_status(&e), e)
}

/// RFC 7386 JSON merge patch of `patch` into `doc`.
pub fn merge(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Default::default());
    }
    let d = doc.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            d.remove(k);
        } else {
            merge(d.entry(k.clone()).or_insert(Value::Null), v);
        }
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

    fn identity() -> ClaimIdentity {
        ClaimIdentity {
            lock: "L".into(),
            claimed_at: SystemTime::now(),
            init: Some(sandbox_core::InitRuntimeRequest {
                env_vars: Default::default(),
                access_token: "tok".into(),
                skip_refresh: false,
            }),
        }
    }

    #[test]
    fn take_patch_is_guarded_and_marks_the_sandbox() {
        let id = identity();
        let mut t = Take::new(&id, "key-1");
        t.labels.insert("team".into(), "a".into());
        t.annotations.insert("note".into(), "x".into());
        t.spec.insert("pauseTime".into(), Value::Null);
        let p = t.patch(&pool_sbx("a", "h", true, false));
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        assert!(p["metadata"]["ownerReferences"].is_null());
        assert_eq!(p["metadata"]["labels"][LABEL_SANDBOX_CLAIMED], "true");
        assert_eq!(p["metadata"]["labels"]["team"], "a");
        assert_eq!(p["metadata"]["annotations"][ANNOTATION_OWNER], "key-1");
        assert_eq!(p["metadata"]["annotations"][ANNOTATION_LOCK], "L");
        assert_eq!(p["metadata"]["annotations"]["note"], "x");
        assert_eq!(
            p["metadata"]["annotations"][ANNOTATION_RUNTIME_ACCESS_TOKEN],
            "tok"
        );
        assert!(p["spec"]["pauseTime"].is_null());
        let ts = p["metadata"]["annotations"][ANNOTATION_CLAIM_TIMESTAMP]
            .as_str()
            .unwrap();
        assert_eq!(ts.len(), "2026-12-05T10:00:00.123Z".len(), "{ts}");
        assert!(ts.parse::<Timestamp>().is_ok(), "{ts}");
    }

    #[test]
    fn take_applied_to_a_new_sandbox() {
        let id = identity();
        let mut t = Take::new(&id, "o");
        t.spec.insert("paused".into(), json!(true));
        let s = t.apply_to_new(pool_sbx("n", "h", true, false)).unwrap();
        assert!(s.metadata.owner_references.is_none());
        let ann = s.metadata.annotations.unwrap();
        assert_eq!(ann[ANNOTATION_SANDBOX_PRIORITY], "100");
        assert_eq!(ann[ANNOTATION_OWNER], "o");
        assert_eq!(s.metadata.labels.unwrap()[LABEL_TEMPLATE_HASH], "h");
        assert!(s.spec.paused);
    }

    #[test]
    fn in_place_change_touches_container_zero_and_only_set_cpu() {
        let mut t: PodTemplateSpec = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "main", "image": "a:1", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
            {"name": "side", "image": "b:1"}]}}))
        .unwrap();
        let change = InPlaceChange {
            image: Some("a:2".into()),
            cpu_request: Some(parse_cpu("250m").unwrap()),
            cpu_limit: Some(parse_cpu("2").unwrap()),
        };
        change.apply(&mut t);
        let c = &t.spec.as_ref().unwrap().containers;
        assert_eq!(c[0].image.as_deref(), Some("a:2"));
        let r = c[0].resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "250m");
        assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "1Gi");
        assert!(
            r.limits.is_none(),
            "a limit the template does not set stays unset"
        );
        assert_eq!(c[1].image.as_deref(), Some("b:1"));
    }

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "agent-runtime:v2",
            "registry.example.com:5000/team/app:1.2.3",
            "localhost/x",
            &format!("a/b@sha256:{}", "0".repeat(64)),
        ] {
            assert!(parse_image(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "a:",
            "a:-x",
            "a//b",
            "a@sha256:xyz",
            "/a",
            "a/",
        ] {
            assert!(parse_image(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_quantities() {
        for ok in ["250m", "2", "0.5", "1500m"] {
            assert_eq!(parse_cpu(ok).unwrap().0, ok);
        }
        for bad in [
            "", "0", "0m", "0.0", "-1", "1e3", "abc", "1Gi", ".5", "5.", "1.2.3", "m",
        ] {
            assert!(parse_cpu(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn merge_follows_rfc7386() {
        let mut d = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge(&mut d, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(d, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
