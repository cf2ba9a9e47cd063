//! Signed `/files` URLs (`v1_` signatures) and constant-time token comparison.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Compares two secrets in constant time (for equal lengths).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `"v1_" + base64_std_nopad(sha256("<path>:<op>:<user>:<token>[:<expiration>]"))`.
pub fn signature(
    path: &str,
    operation: &str,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        None => format!("{path}:{operation}:{username}:{token}"),
        Some(e) => format!("{path}:{operation}:{username}:{token}:{e}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Why a `/files` request was refused (every case is a 401 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("access token present in header but does not match")]
    HeaderMismatch,
    #[error("missing signature query parameter")]
    Missing,
    #[error("invalid signature")]
    Invalid,
    #[error("signature is already expired")]
    Expired,
}

/// The `/files` authorisation rule of envd: with no token set everything passes; a token header,
/// if present, must match; otherwise a valid, unexpired signature is required.
#[allow(clippy::too_many_arguments)]
pub fn validate(
    token: Option<&str>,
    header_token: Option<&str>,
    signature_param: Option<&str>,
    expiration: Option<i64>,
    username: Option<&str>,
    path: &str,
    operation: &str,
    now_unix: i64,
) -> Result<(), SigningError> {
    let Some(token) = token else { return Ok(()) };
    if let Some(h) = header_token.filter(|h| !h.is_empty()) {
        return if constant_time_eq(h.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(SigningError::HeaderMismatch)
        };
    }
    let Some(sig) = signature_param else {
        return Err(SigningError::Missing);
    };
    let expected = signature(path, operation, username.unwrap_or(""), token, expiration);
    if !constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
        return Err(SigningError::Invalid);
    }
    if let Some(exp) = expiration
        && exp < now_unix
    {
        return Err(SigningError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sdk_algorithm() {
        // python: base64.b64encode(sha256(b"/home/user/a.txt:read::tok").digest()).rstrip(b"=")
        let s = signature("/home/user/a.txt", "read", "", "tok", None);
        assert_eq!(s, "v1_Zkbb3914oLJLvMBzCAHQhm2ydBLxbSx2eQUR/kLdvIY");
    }

    #[test]
    fn validation_rules() {
        let ok = signature("p", "read", "", "t", Some(100));
        assert_eq!(
            validate(None, None, None, None, None, "p", "read", 0),
            Ok(())
        );
        assert_eq!(
            validate(Some("t"), Some("t"), None, None, None, "p", "read", 0),
            Ok(())
        );
        assert_eq!(
            validate(
                Some("t"),
                Some("x"),
                Some(&ok),
                Some(100),
                None,
                "p",
                "read",
                0
            ),
            Err(SigningError::HeaderMismatch)
        );
        assert_eq!(
            validate(Some("t"), None, None, None, None, "p", "read", 0),
            Err(SigningError::Missing)
        );
        assert_eq!(
            validate(Some("t"), None, Some(&ok), Some(100), None, "p", "read", 50),
            Ok(())
        );
        assert_eq!(
            validate(
                Some("t"),
                None,
                Some(&ok),
                Some(100),
                None,
                "p",
                "read",
                101
            ),
            Err(SigningError::Expired)
        );
        assert_eq!(
            validate(
                Some("t"),
                None,
                Some(&ok),
                Some(100),
                None,
                "p",
                "write",
                50
            ),
            Err(SigningError::Invalid)
        );
        assert_eq!(
            validate(
                Some("t"),
                None,
                Some(&ok),
                Some(100),
                Some("root"),
                "p",
                "read",
                50
            ),
            Err(SigningError::Invalid)
        );
        assert_eq!(
            SigningError::Expired.to_string(),
            "signature is already expired"
        );
    }
}
