//! Unix accounts: lookup by name (passwd/NSS), supplementary groups, names of uids and gids.
//!
//! The account the daemon itself runs as is special: its home directory is the daemon's `$HOME`
//! when that is set to an absolute path, so a launcher (the node simulator, the manager's local
//! mode) can give each daemon a scratch home without touching the machine's real one. A daemon
//! running under a uid that has no passwd entry (arbitrary-uid containers) still serves its own
//! user, named by its numeric uid.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// A resolved Unix account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Supplementary groups (including the primary group).
    pub groups: Vec<u32>,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn getpw(by: Result<&CStr, u32>) -> Option<Passwd> {
    crate::sys::getpw(by).map(|p| Passwd {
        name: p.name,
        uid: p.uid,
        gid: p.gid,
        home: p.home,
    })
}

fn group_list(name: &str, gid: u32) -> Vec<u32> {
    match CString::new(name) {
        Ok(cname) => crate::sys::group_list(&cname, gid),
        Err(_) => vec![gid],
    }
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    crate::sys::geteuid()
}

/// The effective gid of this process.
pub fn egid() -> u32 {
    crate::sys::getegid()
}

fn env_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// The account the daemon runs as.
pub fn current_user() -> User {
    let uid = euid();
    match getpw(Err(uid)) {
        Some(p) => User {
            groups: group_list(&p.name, p.gid),
            home: env_home().unwrap_or(p.home),
            name: p.name,
            uid,
            gid: p.gid,
        },
        None => User {
            name: uid.to_string(),
            uid,
            gid: egid(),
            home: env_home().unwrap_or_else(|| PathBuf::from("/")),
            groups: vec![egid()],
        },
    }
}

/// Looks an account up by name; `None` when it does not exist.
pub fn lookup(name: &str) -> Option<User> {
    if name.is_empty() {
        return None;
    }
    let me = current_user();
    if name == me.name {
        return Some(me);
    }
    let cname = CString::new(name).ok()?;
    let p = getpw(Ok(&cname))?;
    if p.uid == me.uid {
        // Another name for the daemon's own uid: same home rule.
        return Some(User {
            name: p.name,
            uid: p.uid,
            gid: p.gid,
            home: me.home,
            groups: me.groups,
        });
    }
    Some(User {
        groups: group_list(&p.name, p.gid),
        name: p.name,
        uid: p.uid,
        gid: p.gid,
        home: p.home,
    })
}

/// Name of a uid, or the number as text.
pub fn user_name(uid: u32) -> String {
    getpw(Err(uid))
        .map(|p| p.name)
        .unwrap_or_else(|| uid.to_string())
}

/// Name of a gid, or the number as text.
pub fn group_name(gid: u32) -> String {
    crate::sys::group_name(gid).unwrap_or_else(|| gid.to_string())
}

/// Caches uid/gid → name lookups for one listing.
#[derive(Default, Debug)]
pub struct NameCache {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl NameCache {
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| user_name(uid))
            .clone()
    }
    pub fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| group_name(gid))
            .clone()
    }
}

/// Extracts the user name from `Authorization: Basic base64("<user>:<ignored>")`.
/// `Ok(None)` when the header is absent; an error for a malformed one.
pub fn basic_auth_user(header: Option<&http::HeaderValue>) -> Result<Option<String>, String> {
    let Some(v) = header else { return Ok(None) };
    let s = v
        .to_str()
        .map_err(|_| "invalid Authorization header".to_string())?
        .trim();
    let Some((scheme, rest)) = s.split_once(' ') else {
        return Err("invalid Authorization header: expected Basic credentials".into());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // Other schemes are not a user selection (e.g. a bearer token meant for a proxy).
        return Ok(None);
    }
    let raw = crate::proto::decode_b64(rest.trim())
        .map_err(|e| format!("invalid Basic credentials: {e}"))?;
    let text =
        String::from_utf8(raw).map_err(|_| "invalid Basic credentials: not UTF-8".to_string())?;
    let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
    Ok(Some(user.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_current_user_resolve() {
        let me = current_user();
        assert_eq!(me.uid, euid());
        assert_eq!(lookup(&me.name).unwrap().uid, me.uid);
        assert_eq!(lookup("root").unwrap().uid, 0);
        assert!(lookup("no-such-user-agent-runtime").is_none());
        assert!(lookup("").is_none());
        assert_eq!(user_name(0), "root");
        assert_eq!(group_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "4000000000");
    }

    #[test]
    fn basic_auth_parsing() {
        let h = http::HeaderValue::from_static("Basic cm9vdDo=");
        assert_eq!(basic_auth_user(Some(&h)).unwrap().as_deref(), Some("root"));
        let h = http::HeaderValue::from_static("basic dXNlcjpwYXNz");
        assert_eq!(basic_auth_user(Some(&h)).unwrap().as_deref(), Some("user"));
        assert_eq!(basic_auth_user(None).unwrap(), None);
        let h = http::HeaderValue::from_static("Bearer abc");
        assert_eq!(basic_auth_user(Some(&h)).unwrap(), None);
        let h = http::HeaderValue::from_static("Basic !!!");
        assert!(basic_auth_user(Some(&h)).is_err());
    }
}
