//! API keys and teams. Keys are shaped `e2b_<40 hex>` (every SDK version accepts that shape) and
//! stored only as SHA-256 digests; a key's raw value is shown once, when it is created. Each key
//! belongs to a team; the admin team manages every team. [`KeyBook`] holds the rules; where its
//! document lives is a [`DocStorage`]: `keys.json` in the data directory ([`FileStorage`]), or a
//! Secret shared by every manager replica (`kube::keys::SecretStorage`). Writes are
//! read-modify-write, guarded by the version read, so replicas never lose each other's keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Caller, Team, random_hex, random_uuid};
use crate::store;

/// The admin team (upstream's constants, so tooling written for it keeps working).
pub const ADMIN_TEAM_ID: &str = "550e8400-e29b-41d4-a716-446655449999";
pub const ADMIN_TEAM_NAME: &str = "admin";
pub const ADMIN_KEY_ID: &str = "550e8400-e29b-41d4-a716-446655440000";

/// A new raw key: `e2b_` and 40 hex digits (160 random bits).
pub fn new_raw_key() -> String {
    format!("e2b_{}", random_hex(20))
}

/// Whether `raw` has the shape of a key this manager issues.
pub fn well_formed(raw: &str) -> bool {
    raw.strip_prefix("e2b_").is_some_and(|h| {
        h.len() == 40
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The stored digest of a raw key.
pub fn digest(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

pub fn admin_team() -> Team {
    Team {
        id: ADMIN_TEAM_ID.into(),
        name: ADMIN_TEAM_NAME.into(),
    }
}

/// The caller every request is, when authentication is disabled (upstream's `enableAuth=false`).
pub fn anonymous_admin() -> Caller {
    Caller {
        key_id: ADMIN_KEY_ID.into(),
        team: admin_team(),
        admin: true,
    }
}

/// What is shown of a key instead of its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyMask {
    pub prefix: String,
    pub value_length: usize,
    pub masked_value_prefix: String,
    pub masked_value_suffix: String,
}

impl KeyMask {
    pub fn of(raw: &str) -> KeyMask {
        let value = raw.strip_prefix("e2b_").unwrap_or(raw);
        KeyMask {
            prefix: "e2b_".into(),
            value_length: value.len(),
            masked_value_prefix: value.chars().take(2).collect(),
            masked_value_suffix: value
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect(),
        }
    }
}

/// A stored key (never its value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub team_id: String,
    pub sha256: String,
    pub mask: KeyMask,
    pub created_at: Timestamp,
    pub created_by: Option<String>,
}

/// A key just created: the only time its raw value is known.
#[derive(Clone, Debug)]
pub struct CreatedKey {
    pub record: KeyRecord,
    pub team: Team,
    pub raw: String,
}

/// A team as `GET /teams` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamInfo {
    pub team: Team,
    pub is_default: bool,
}

/// Why a key operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The caller a raw key belongs to.
    async fn authenticate(&self, raw: &str) -> Option<Caller>;
    async fn teams(&self, caller: &Caller) -> Vec<TeamInfo>;
    /// The keys of the caller's team (every team's for the admin).
    async fn list(&self, caller: &Caller) -> Vec<(KeyRecord, Team)>;
    /// Creates a key in the caller's team, or (admin only) in the team named `team_name`,
    /// creating that team if it does not exist.
    async fn create(
        &self,
        caller: &Caller,
        name: &str,
        team_name: Option<&str>,
    ) -> Result<CreatedKey, KeyError>;
    async fn rename(&self, caller: &Caller, id: &str, name: &str) -> Result<KeyRecord, KeyError>;
    async fn delete(&self, caller: &Caller, id: &str) -> Result<(), KeyError>;
}

/// Every team and key (digests only): what a [`DocStorage`] keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeysDocument {
    pub teams: Vec<Team>,
    pub keys: Vec<KeyRecord>,
}

/// Where the keys document is kept. `load` returns it with an opaque version; `save` writes it
/// only over that version and answers `false` when it changed meanwhile (read again).
#[async_trait]
pub trait DocStorage: Send + Sync + 'static {
    async fn load(&self) -> Result<(KeysDocument, String), KeyError>;
    async fn save(&self, doc: &KeysDocument, version: &str) -> Result<bool, KeyError>;
}

/// `keys.json` in the data directory (one manager owns it).
#[derive(Debug)]
pub struct FileStorage {
    path: PathBuf,
}

impl FileStorage {
    pub fn new(data_dir: &Path) -> Self {
        FileStorage {
            path: data_dir.join("keys.json"),
        }
    }
}

#[async_trait]
impl DocStorage for FileStorage {
    async fn load(&self) -> Result<(KeysDocument, String), KeyError> {
        let doc = store::read_json(&self.path)
            .map_err(|e| KeyError::Internal(e.to_string()))?
            .unwrap_or_default();
        Ok((doc, String::new()))
    }

    async fn save(&self, doc: &KeysDocument, _version: &str) -> Result<bool, KeyError> {
        store::write_json(&self.path, doc).map_err(|e| KeyError::Internal(e.to_string()))?;
        Ok(true)
    }
}

/// How often a write is tried again when the stored document changed under it.
const COMMIT_ATTEMPTS: usize = 8;

/// Keys and teams: the rules, an in-memory copy for authentication, and the storage behind.
#[derive(Debug)]
pub struct KeyBook<S> {
    storage: S,
    doc: Arc<RwLock<KeysDocument>>,
}

/// The embedded backend's store.
pub type FileKeyStore = KeyBook<FileStorage>;

/// A team name: what upstream allows for a namespace (lowercase DNS label), no `--`.
fn valid_team_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.contains("--")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl FileKeyStore {
    /// Opens (or creates) `keys.json` in `data_dir` with `admin_raw` as the admin key.
    pub async fn open_dir(data_dir: &Path, admin_raw: &str) -> Result<FileKeyStore, KeyError> {
        KeyBook::open(FileStorage::new(data_dir), admin_raw).await
    }
}

/// Puts the admin team and key (with `admin_raw`'s digest) into `doc`.
fn upsert_admin(doc: &mut KeysDocument, admin_raw: &str) {
    if !doc.teams.iter().any(|t| t.id == ADMIN_TEAM_ID) {
        doc.teams.push(admin_team());
    }
    let admin = KeyRecord {
        id: ADMIN_KEY_ID.into(),
        name: "admin".into(),
        team_id: ADMIN_TEAM_ID.into(),
        sha256: digest(admin_raw),
        mask: KeyMask::of(admin_raw),
        created_at: doc
            .keys
            .iter()
            .find(|k| k.id == ADMIN_KEY_ID)
            .map(|k| k.created_at)
            .unwrap_or_else(Timestamp::now),
        created_by: None,
    };
    doc.keys.retain(|k| k.id != ADMIN_KEY_ID);
    doc.keys.insert(0, admin);
}

impl<S: DocStorage> KeyBook<S> {
    /// Opens the store and makes sure the admin team and key exist with `admin_raw` as the
    /// admin key (replicas racing at start-up all succeed: the write is guarded).
    pub async fn open(storage: S, admin_raw: &str) -> Result<Self, KeyError> {
        let book = KeyBook {
            storage,
            doc: Arc::new(RwLock::new(KeysDocument::default())),
        };
        book.commit(|doc| {
            upsert_admin(doc, admin_raw);
            Ok(())
        })
        .await?;
        Ok(book)
    }

    /// The in-memory copy, for a watch of the storage to replace when another replica writes.
    pub fn shared(&self) -> Arc<RwLock<KeysDocument>> {
        self.doc.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeysDocument> {
        self.doc.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the stored document, changes it with `f`, and writes it over the version read
    /// (again from a fresh read when another writer got there first); then it is current here.
    /// An error from `f` writes nothing.
    async fn commit<T>(
        &self,
        f: impl Fn(&mut KeysDocument) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let (mut doc, version) = self.storage.load().await?;
            let out = f(&mut doc)?;
            if self.storage.save(&doc, &version).await? {
                *self.doc.write().unwrap_or_else(|e| e.into_inner()) = doc;
                return Ok(out);
            }
        }
        Err(KeyError::Internal(
            "the key store kept changing under this write; try again".into(),
        ))
    }
}

fn team_of(doc: &KeysDocument, id: &str) -> Team {
    doc.teams
        .iter()
        .find(|t| t.id == id)
        .cloned()
        .unwrap_or_else(admin_team)
}

#[async_trait]
impl<S: DocStorage> KeyStore for KeyBook<S> {
    async fn authenticate(&self, raw: &str) -> Option<Caller> {
        if !well_formed(raw) {
            return None;
        }
        let d = digest(raw);
        let doc = self.read();
        let key = doc
            .keys
            .iter()
            .find(|k| crate::api::constant_time_eq(k.sha256.as_bytes(), d.as_bytes()))?;
        let team = team_of(&doc, &key.team_id);
        Some(Caller {
            key_id: key.id.clone(),
            admin: team.id == ADMIN_TEAM_ID,
            team,
        })
    }

    async fn teams(&self, caller: &Caller) -> Vec<TeamInfo> {
        let doc = self.read();
        doc.teams
            .iter()
            .filter(|t| caller.sees(&t.id))
            .map(|t| TeamInfo {
                team: t.clone(),
                is_default: t.id == caller.team.id,
            })
            .collect()
    }

    async fn list(&self, caller: &Caller) -> Vec<(KeyRecord, Team)> {
        let doc = self.read();
        doc.keys
            .iter()
            .filter(|k| caller.sees(&k.team_id))
            .map(|k| (k.clone(), team_of(&doc, &k.team_id)))
            .collect()
    }

    async fn create(
        &self,
        caller: &Caller,
        name: &str,
        team_name: Option<&str>,
    ) -> Result<CreatedKey, KeyError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(KeyError::BadRequest("api-key name is required".into()));
        }
        if name.len() > 256 {
            return Err(KeyError::BadRequest(
                "api-key name is longer than 256 bytes".into(),
            ));
        }
        if let Some(t) = team_name
            && !valid_team_name(t)
        {
            return Err(KeyError::BadRequest(format!(
                "invalid team name {t:?}: lowercase letters, digits and '-', at most 63, no '--'"
            )));
        }
        let raw = new_raw_key();
        self.commit(|doc| {
            let team = match team_name {
                None => caller.team.clone(),
                Some(t) if t == caller.team.name => caller.team.clone(),
                Some(_) if !caller.admin => {
                    return Err(KeyError::Forbidden(
                        "only the admin team can create keys for another team".into(),
                    ));
                }
                Some(t) => match doc.teams.iter().find(|x| x.name == t) {
                    Some(x) => x.clone(),
                    None => {
                        let x = Team {
                            id: random_uuid(),
                            name: t.to_string(),
                        };
                        doc.teams.push(x.clone());
                        x
                    }
                },
            };
            let record = KeyRecord {
                id: random_uuid(),
                name: name.to_string(),
                team_id: team.id.clone(),
                sha256: digest(&raw),
                mask: KeyMask::of(&raw),
                created_at: Timestamp::now(),
                created_by: Some(caller.key_id.clone()),
            };
            doc.keys.push(record.clone());
            Ok(CreatedKey {
                record,
                team,
                raw: raw.clone(),
            })
        })
        .await
    }

    async fn rename(&self, caller: &Caller, id: &str, name: &str) -> Result<KeyRecord, KeyError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(KeyError::BadRequest("api-key name is required".into()));
        }
        self.commit(|doc| {
            let key = doc
                .keys
                .iter_mut()
                .find(|k| k.id == id && caller.sees(&k.team_id))
                .ok_or_else(|| KeyError::NotFound("API key not found".into()))?;
            key.name = name.to_string();
            Ok(key.clone())
        })
        .await
    }

    async fn delete(&self, caller: &Caller, id: &str) -> Result<(), KeyError> {
        if id == ADMIN_KEY_ID {
            return Err(KeyError::Forbidden(
                "the well-known admin api-key cannot be deleted".into(),
            ));
        }
        self.commit(|doc| {
            let before = doc.keys.len();
            doc.keys
                .retain(|k| !(k.id == id && caller.sees(&k.team_id)));
            if doc.keys.len() == before {
                return Err(KeyError::NotFound("API key not found".into()));
            }
            Ok(())
        })
        .await
    }
}

/// The admin key: `--admin-api-key` if given, else the one stored in the data directory, else a
/// new one written there (mode 0600) for `make run` to print.
pub fn admin_key(data_dir: &Path, given: Option<&str>) -> Result<String, String> {
    if let Some(k) = given.filter(|k| !k.is_empty()) {
        if !well_formed(k) {
            return Err(
                "--admin-api-key must look like e2b_ followed by 40 lowercase hex digits (the SDKs check the e2b_ shape)"
                    .into(),
            );
        }
        return Ok(k.to_string());
    }
    let path = data_dir.join("admin-api-key");
    match std::fs::read_to_string(&path) {
        Ok(k) if well_formed(k.trim()) => Ok(k.trim().to_string()),
        Ok(_) => Err(format!(
            "{} does not hold a well-formed key",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = new_raw_key();
            store::write_secret(&path, &k).map_err(|e| e.to_string())?;
            Ok(k)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_stored_hashed_and_scoped_by_team() {
        let dir = tempfile::tempdir().unwrap();
        let admin_raw = new_raw_key();
        let s = FileKeyStore::open_dir(dir.path(), &admin_raw)
            .await
            .unwrap();
        let admin = s.authenticate(&admin_raw).await.unwrap();
        assert!(admin.admin);
        assert!(s.authenticate("e2b_nope").await.is_none());
        let k = s.create(&admin, "ci", Some("team-a")).await.unwrap();
        assert!(well_formed(&k.raw));
        let on_disk = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(!on_disk.contains(&k.raw), "raw keys never reach the disk");
        let a = s.authenticate(&k.raw).await.unwrap();
        assert_eq!(a.team.name, "team-a");
        assert!(!a.admin);
        // A non-admin cannot create keys for another team, and sees only its own.
        assert!(matches!(
            s.create(&a, "x", Some("team-b")).await,
            Err(KeyError::Forbidden(_))
        ));
        let own = s.create(&a, "second", None).await.unwrap();
        assert_eq!(own.team.id, a.team.id);
        assert_eq!(s.list(&a).await.len(), 2);
        assert!(s.list(&admin).await.len() >= 3);
        assert!(matches!(
            s.delete(&a, ADMIN_KEY_ID).await,
            Err(KeyError::Forbidden(_))
        ));
        s.rename(&a, &own.record.id, "renamed").await.unwrap();
        s.delete(&a, &own.record.id).await.unwrap();
        assert!(s.authenticate(&own.raw).await.is_none());
        // Reopened: everything survives, and the admin key may change.
        drop(s);
        let new_admin = new_raw_key();
        let s = FileKeyStore::open_dir(dir.path(), &new_admin)
            .await
            .unwrap();
        assert!(s.authenticate(&k.raw).await.is_some());
        assert!(s.authenticate(&admin_raw).await.is_none());
        assert!(s.authenticate(&new_admin).await.unwrap().admin);
    }

    /// A storage whose first `conflicts` saves lose to another writer.
    #[derive(Debug)]
    struct Contended {
        inner: FileStorage,
        conflicts: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl DocStorage for Contended {
        async fn load(&self) -> Result<(KeysDocument, String), KeyError> {
            self.inner.load().await
        }
        async fn save(&self, doc: &KeysDocument, version: &str) -> Result<bool, KeyError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self
                .conflicts
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Ok(false);
            }
            self.inner.save(doc, version).await
        }
    }

    #[tokio::test]
    async fn writes_that_lose_a_race_are_read_again_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let admin_raw = new_raw_key();
        let contended = |n: usize| Contended {
            inner: FileStorage::new(dir.path()),
            conflicts: n.into(),
        };
        let s = KeyBook::open(contended(3), &admin_raw).await.unwrap();
        assert!(s.authenticate(&admin_raw).await.unwrap().admin);
        let err = KeyBook::open(contended(COMMIT_ATTEMPTS), &admin_raw)
            .await
            .unwrap_err();
        assert!(matches!(err, KeyError::Internal(_)), "{err:?}");
    }

    #[test]
    fn admin_key_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = admin_key(dir.path(), None).unwrap();
        assert_eq!(admin_key(dir.path(), None).unwrap(), a);
        assert!(admin_key(dir.path(), Some("nope")).is_err());
        let mode = std::fs::metadata(dir.path().join("admin-api-key"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600);
    }
}
