//! API keys in a Secret, shared by every manager replica: the keys document (teams and key
//! digests, never a raw key) in `data["keys.json"]` of Secret `e2b-key-store` (upstream's name)
//! in the system namespace. Writes replace the Secret guarded by the resourceVersion read; a
//! watch of the Secret brings other replicas' writes into this replica's copy.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::claim::is_status;
use crate::keys::{DocStorage, KeyError, KeysDocument};

/// Upstream's Secret name.
pub const SECRET_NAME: &str = "e2b-key-store";
const FIELD: &str = "keys.json";

/// The keys document in a Secret.
#[derive(Clone)]
pub struct SecretStorage {
    api: Api<Secret>,
}

fn internal(e: impl std::fmt::Display) -> KeyError {
    KeyError::Internal(format!("key store Secret: {e}"))
}

fn decode(s: &Secret) -> Result<KeysDocument, KeyError> {
    match s.data.as_ref().and_then(|d| d.get(FIELD)) {
        Some(b) => serde_json::from_slice(&b.0).map_err(internal),
        None => Ok(KeysDocument::default()),
    }
}

impl SecretStorage {
    pub fn new(client: Client, namespace: &str) -> Self {
        SecretStorage {
            api: Api::namespaced(client, namespace),
        }
    }

    /// Keeps `doc` equal to the Secret as other replicas write it, until `shutdown`.
    pub fn watch(&self, doc: Arc<RwLock<KeysDocument>>, shutdown: CancellationToken) {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={SECRET_NAME}"));
        let stream = watcher(self.api.clone(), cfg)
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = stream.next() => ev,
                };
                match ev {
                    None => break,
                    Some(Err(e)) => tracing::warn!(error = %e, "key store watch error (retrying)"),
                    Some(Ok(secret)) => match decode(&secret) {
                        Ok(d) => *doc.write().unwrap_or_else(|e| e.into_inner()) = d,
                        Err(e) => {
                            tracing::warn!(error = %e, "key store Secret not readable; keeping the last good copy")
                        }
                    },
                }
            }
        });
    }
}

#[async_trait]
impl DocStorage for SecretStorage {
    async fn load(&self) -> Result<(KeysDocument, String), KeyError> {
        match self.api.get_opt(SECRET_NAME).await.map_err(internal)? {
            Some(s) => Ok((decode(&s)?, s.resource_version().unwrap_or_default())),
            None => Ok((KeysDocument::default(), String::new())),
        }
    }

    /// Creates the Secret (version "") or replaces it at `version`; `false` when another
    /// replica wrote first.
    async fn save(&self, doc: &KeysDocument, version: &str) -> Result<bool, KeyError> {
        let mut secret = Secret::default();
        secret.metadata.name = Some(SECRET_NAME.into());
        secret.type_ = Some("Opaque".into());
        secret.data = Some(BTreeMap::from([(
            FIELD.to_string(),
            ByteString(serde_json::to_vec(doc).map_err(internal)?),
        )]));
        let res = if version.is_empty() {
            self.api.create(&PostParams::default(), &secret).await
        } else {
            secret.metadata.resource_version = Some(version.into());
            self.api
                .replace(SECRET_NAME, &PostParams::default(), &secret)
                .await
        };
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(internal(e)),
        }
    }
}
