//! Revision hashing: the SandboxSet revision (which sandboxes are "updated"), the Sandbox revision
//! (which pod is current), and the immutable-part hash that decides whether an in-place update is
//! allowed. Hashes go through `safe_encode` (k8s `rand.SafeEncodeString`) so they never spell
//! words and are valid label values.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};
use sandbox_api::{PauseStrategy, RuntimeConfig, SandboxSpec, TemplateRef};
use serde::Serialize;
use sha2::{Digest, Sha256};

const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Maps every byte onto a consonant/digit alphabet (k8s `rand.SafeEncodeString`).
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The part of a SandboxSet that defines its sandboxes.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveTemplate<'a> {
    pub template: Option<&'a PodTemplateSpec>,
    pub template_ref: Option<&'a TemplateRef>,
    pub volume_claim_templates: &'a [PersistentVolumeClaim],
    pub persistent_contents: &'a [String],
    pub runtimes: &'a [RuntimeConfig],
    pub pause_strategy: Option<&'a PauseStrategy>,
}

/// SandboxSet revision: `safe_encode(fnv32a(json(effective template)))`.
pub fn set_revision(t: &EffectiveTemplate<'_>) -> String {
    let json = serde_json::to_vec(t).expect("template serialises");
    safe_encode(&fnv32a(&json).to_string())
}

/// Sandbox revision: first 9 hex chars of sha256(json(spec.template)), or of json(templateRef).
pub fn sandbox_revision(spec: &SandboxSpec) -> String {
    let json = match (&spec.template, &spec.template_ref) {
        (Some(t), _) => serde_json::to_vec(t),
        (None, Some(r)) => serde_json::to_vec(r),
        (None, None) => Ok(b"null".to_vec()),
    }
    .expect("template serialises");
    let digest = hex::encode(Sha256::digest(&json));
    safe_encode(&digest[..9])
}

/// Hash of the template with labels, annotations, images and resources blanked: if it changes,
/// the pod can't be updated in place.
pub fn immutable_part_hash(t: &PodTemplateSpec) -> String {
    let mut t = t.clone();
    if let Some(md) = t.metadata.as_mut() {
        md.labels = None;
        md.annotations = None;
    }
    // `metadata: {}` and no metadata are the same template.
    if t.metadata
        .as_ref()
        .is_some_and(|m| *m == Default::default())
    {
        t.metadata = None;
    }
    if let Some(spec) = t.spec.as_mut() {
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.image = None;
            c.resources = None;
        }
    }
    let json = serde_json::to_vec(&t).expect("template serialises");
    safe_encode(&hex::encode(Sha256::digest(&json))[..9])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn tpl(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn safe_encode_is_label_safe_and_stable() {
        let e = safe_encode("0123456789abcdef");
        assert_eq!(e.len(), 16);
        assert!(e.bytes().all(|b| ALPHANUMS.contains(&b)));
        assert_eq!(e, safe_encode("0123456789abcdef"));
    }

    #[test]
    fn revisions_follow_template_changes() {
        let mut a = SandboxSpec {
            template: Some(tpl("img:1")),
            ..Default::default()
        };
        let r1 = sandbox_revision(&a);
        assert_eq!(r1.len(), 9);
        a.paused = true; // not part of the template
        assert_eq!(sandbox_revision(&a), r1);
        a.template = Some(tpl("img:2"));
        assert_ne!(sandbox_revision(&a), r1);
        assert_eq!(
            immutable_part_hash(&tpl("img:1")),
            immutable_part_hash(&tpl("img:2"))
        );
    }

    #[test]
    fn set_revision_covers_runtimes() {
        let t = tpl("x");
        let base = EffectiveTemplate {
            template: Some(&t),
            template_ref: None,
            volume_claim_templates: &[],
            persistent_contents: &[],
            runtimes: &[],
            pause_strategy: None,
        };
        let r = vec![RuntimeConfig {
            name: "agent-runtime".into(),
        }];
        let with_rt = EffectiveTemplate {
            runtimes: &r,
            ..base
        };
        let base2 = EffectiveTemplate {
            runtimes: &[],
            ..with_rt
        };
        assert_ne!(set_revision(&with_rt), set_revision(&base2));
    }
}
