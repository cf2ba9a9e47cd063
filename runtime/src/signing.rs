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

/// The `X-Access-Token` of a request. Two or more of them are ambiguous and never match: the
/// gateway refuses them too, so the daemon and the gateway can never check different tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenHeader<'a> {
    Absent,
    One(&'a str),
    /// Repeated, or not visible ASCII.
    Unusable,
}

impl<'a> TokenHeader<'a> {
    pub const NAME: &'static str = "x-access-token";

    pub fn of(headers: &'a http::HeaderMap) -> Self {
        let mut values = headers.get_all(Self::NAME).iter();
        match (values.next(), values.next()) {
            (None, _) => TokenHeader::Absent,
            (Some(v), None) => v.to_str().map_or(TokenHeader::Unusable, TokenHeader::One),
            (Some(_), Some(_)) => TokenHeader::Unusable,
        }
    }

    /// Whether the header holds exactly `token`.
    pub fn matches(self, token: &str) -> bool {
        matches!(self, TokenHeader::One(h) if constant_time_eq(h.as_bytes(), token.as_bytes()))
    }
}

impl<'a> From<Option<&'a str>> for TokenHeader<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(TokenHeader::Absent, TokenHeader::One)
    }
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
    #[error("a signed URL must name the path it grants access to (path query parameter)")]
    NoPath,
}

/// The `/files` authorisation rule of envd: with no token set everything passes; a token header,
/// if present, must match; otherwise a valid, unexpired signature over a non-empty path is
/// required (a signature over no path would grant any multipart file name).
#[allow(clippy::too_many_arguments)]
pub fn validate<'a>(
    token: Option<&str>,
    header_token: impl Into<TokenHeader<'a>>,
    signature_param: Option<&str>,
    expiration: Option<i64>,
    username: Option<&str>,
    path: &str,
    operation: &str,
    now_unix: i64,
) -> Result<(), SigningError> {
    let Some(token) = token else { return Ok(()) };
    match header_token.into() {
        TokenHeader::Absent | TokenHeader::One("") => {}
        h if h.matches(token) => return Ok(()),
        _ => return Err(SigningError::HeaderMismatch),
    }
    let Some(sig) = signature_param else {
        return Err(SigningError::Missing);
    };
    if path.is_empty() {
        return Err(SigningError::NoPath);
    }
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
