//! File metadata stored as `user.e2b.<key>` extended attributes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::Path;

use http::HeaderMap;

/// The xattr namespace of user metadata.
pub const PREFIX: &str = "user.e2b.";
/// Header prefix of metadata on uploads.
pub const HEADER_PREFIX: &str = "x-metadata-";
/// Longest key (an xattr name is at most 255 bytes, the prefix takes 9).
pub const MAX_KEY_BYTES: usize = 255 - PREFIX.len();
/// Largest total size of keys and values of one file.
pub const MAX_TOTAL_BYTES: usize = 4096;

fn cpath(path: &Path) -> io::Result<CString> {
    crate::sys::cpath(path)
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP))
}

fn list(path: &CString) -> io::Result<Vec<String>> {
    let mut buf = vec![0u8; 1024];
    loop {
        let e = match crate::sys::listxattr(path, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect());
            }
            Err(e) => e,
        };
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(e);
    }
}

fn get(path: &CString, name: &str) -> io::Result<Option<Vec<u8>>> {
    let cname =
        CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad name"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let e = match crate::sys::getxattr(path, &cname, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Reads the metadata of a file (empty when there is none or xattrs are unsupported).
pub fn read(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(c) = cpath(path) else { return out };
    let Ok(names) = list(&c) else { return out };
    for name in names {
        if let Some(key) = name.strip_prefix(PREFIX)
            && let Ok(Some(v)) = get(&c, &name)
        {
            out.insert(key.to_string(), String::from_utf8_lossy(&v).into_owned());
        }
    }
    out
}

/// Replaces the whole metadata set of a file.
pub fn replace(path: &Path, metadata: &BTreeMap<String, String>) -> io::Result<()> {
    let c = cpath(path)?;
    let existing = match list(&c) {
        Ok(n) => n,
        Err(e) if unsupported(&e) && metadata.is_empty() => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in existing.iter().filter(|n| n.starts_with(PREFIX)) {
        let key = &name[PREFIX.len()..];
        if !metadata.contains_key(key) {
            let cname = CString::new(name.as_str())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad name"))?;
            if let Err(e) = crate::sys::removexattr(&c, &cname)
                && e.raw_os_error() != Some(libc::ENODATA)
            {
                return Err(e);
            }
        }
    }
    for (k, v) in metadata {
        let cname = CString::new(format!("{PREFIX}{k}"))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad key"))?;
        crate::sys::setxattr(&c, &cname, v.as_bytes())?;
    }
    Ok(())
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Collects and validates `X-Metadata-<Key>: <value>` headers: keys are lowercased HTTP tokens of
/// at most 246 bytes, values printable ASCII, 4096 bytes in total.
pub fn from_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if key.is_empty() || !key.bytes().all(is_token_char) {
            return Err(format!("invalid metadata key {key:?}"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "metadata key {key:?} is longer than {MAX_KEY_BYTES} bytes"
            ));
        }
        let v = value.as_bytes();
        if !v.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(format!("metadata value of {key:?} must be printable ASCII"));
        }
        total += key.len() + v.len();
        if total > MAX_TOTAL_BYTES {
            return Err(format!(
                "metadata is larger than {MAX_TOTAL_BYTES} bytes in total"
            ));
        }
        out.insert(key, String::from_utf8_lossy(v).into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_validation() {
        let mut h = HeaderMap::new();
        h.insert("x-metadata-Author", "me".parse().unwrap());
        h.insert("x-metadata-k2", "v 2".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        let m = from_headers(&h).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["author"], "me");
        let mut bad = HeaderMap::new();
        bad.insert(
            "x-metadata-k",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(from_headers(&bad).is_err());
        let mut big = HeaderMap::new();
        big.insert("x-metadata-k", "x".repeat(5000).parse().unwrap());
        assert!(from_headers(&big).is_err());
    }

    #[test]
    fn roundtrip_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), "1".to_string());
        m.insert("b".to_string(), "2".to_string());
        replace(&f, &m).unwrap();
        assert_eq!(read(&f), m);
        m.remove("a");
        replace(&f, &m).unwrap();
        assert_eq!(read(&f), m);
        replace(&f, &BTreeMap::new()).unwrap();
        assert!(read(&f).is_empty());
    }
}
