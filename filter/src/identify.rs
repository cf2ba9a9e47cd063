//! Which sandbox and port a request is for.
//!
//! Precedence (upstream's, see docs/architecture.md):
//! 1. headers `e2b-sandbox-id` [+ `e2b-sandbox-port`]; the id alone means the default port
//!    (49983, envd); a port header without an id header is an error;
//! 2. Host `<port>-<id>.<domain>`;
//! 3. path `/kruise/<id>/<port>[/<rest>]`, which is rewritten to `/<rest>`.
//!
//! A `/kruise/<id>/<port>/…` path is also rewritten when a header or the Host named the same
//! sandbox (the patched SDK sends both); when they name another sandbox the path is the
//! application's own and is left alone. Ports are range-checked (1–65535). Malformed input is an
//! error that the caller answers with 400; a request that names no sandbox at all is `Ok(None)`.

use std::borrow::Cow;

use crate::route::valid_sandbox_id;

/// A request header as Envoy holds it: absent, one value, or repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderField<'a> {
    Absent,
    One(&'a [u8]),
    Repeated,
}

/// The parts of a request that identification looks at.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub sandbox_id: HeaderField<'a>,
    pub sandbox_port: HeaderField<'a>,
    pub authority: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
}

/// How the sandbox was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Host,
    Path,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub id: &'a str,
    pub port: u16,
    pub source: Source,
    /// New `:path` when the request used the `/kruise/<id>/<port>/` form.
    pub rewrite_path: Option<String>,
}

/// Why a request that tried to name a sandbox was malformed (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("{header} header is present without {id_header}")]
    PortWithoutId {
        header: Cow<'static, str>,
        id_header: Cow<'static, str>,
    },
    #[error("{0} header is repeated")]
    Repeated(Cow<'static, str>),
    #[error("{0} header is not a valid sandbox id")]
    InvalidIdHeader(Cow<'static, str>),
    #[error("{0} header is not a port number between 1 and 65535")]
    InvalidPortHeader(Cow<'static, str>),
    #[error("host names port {0:?}, which is not between 1 and 65535")]
    InvalidHostPort(String),
    #[error("path names an invalid sandbox id or a port that is not between 1 and 65535")]
    InvalidPath,
}

/// Names and defaults identification works with.
#[derive(Debug, Clone)]
pub struct IdentifyConfig {
    pub sandbox_header: String,
    pub port_header: String,
    pub default_port: u16,
    /// Prefix of the path form, without a trailing slash (default `/kruise`).
    pub path_prefix: String,
}

impl Default for IdentifyConfig {
    fn default() -> Self {
        IdentifyConfig {
            sandbox_header: "e2b-sandbox-id".into(),
            port_header: "e2b-sandbox-port".into(),
            default_port: crate::ENVD_PORT,
            path_prefix: "/kruise".into(),
        }
    }
}

/// Parses a decimal port in 1..=65535 (no sign, no spaces, at most 5 digits).
pub fn parse_port(s: &[u8]) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = s.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(v).ok().filter(|p| *p != 0)
}

/// The `<port>-<id>` of a Host `<port>-<id>.<domain>` (port suffix of the authority ignored).
/// `Ok(None)` when the host does not have that shape.
fn from_host(authority: &[u8]) -> Result<Option<(&str, u16)>, BadRequest> {
    if authority.first() == Some(&b'[') {
        return Ok(None); // IPv6 literal
    }
    let Ok(authority) = std::str::from_utf8(authority) else {
        return Ok(None);
    };
    let Some((label, _domain)) = authority.split_once('.') else {
        return Ok(None); // upstream requires `<port>-<id>.` with a dot
    };
    let Some((port, id)) = label.split_once('-') else {
        return Ok(None);
    };
    if port.is_empty()
        || !port.bytes().all(|b| b.is_ascii_digit())
        || id.is_empty()
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Ok(None);
    }
    match parse_port(port.as_bytes()) {
        Some(p) => Ok(Some((id, p))),
        None => Err(BadRequest::InvalidHostPort(port.to_string())),
    }
}

/// The path form: `(id, port, rewritten path)`. `Ok(None)` when the path is not of that form
/// (including `<prefix>/api/…`, which is the control-plane API).
fn from_path<'a>(
    path: &'a [u8],
    prefix: &str,
) -> Result<Option<(&'a str, u16, String)>, BadRequest> {
    let Ok(path) = std::str::from_utf8(path) else {
        return Ok(None);
    };
    let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return Ok(None);
    };
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let mut parts = rest.splitn(3, '/');
    let id = parts.next().unwrap_or("");
    if id == "api" || id.is_empty() {
        return Ok(None);
    }
    let Some(port) = parts.next() else {
        return Ok(None); // `/kruise/<id>` names no port: not the path form
    };
    let tail = parts.next().unwrap_or("");
    let port = parse_port(port.as_bytes()).ok_or(BadRequest::InvalidPath)?;
    if !valid_sandbox_id(id) {
        return Err(BadRequest::InvalidPath);
    }
    let mut rewritten = String::with_capacity(tail.len() + 1 + query.map_or(0, str::len));
    rewritten.push('/');
    rewritten.push_str(tail);
    if let Some(q) = query {
        rewritten.push_str(q);
    }
    Ok(Some((id, port, rewritten)))
}

fn header_name(s: &str) -> Cow<'static, str> {
    Cow::Owned(s.to_string())
}

/// Identifies the sandbox a request is for (see the module docs for the rules).
pub fn identify<'a>(
    cfg: &IdentifyConfig,
    req: &Incoming<'a>,
) -> Result<Option<Target<'a>>, BadRequest> {
    let from_headers = match (req.sandbox_id, req.sandbox_port) {
        (HeaderField::Repeated, _) => {
            return Err(BadRequest::Repeated(header_name(&cfg.sandbox_header)));
        }
        (_, HeaderField::Repeated) => {
            return Err(BadRequest::Repeated(header_name(&cfg.port_header)));
        }
        (HeaderField::One(id), port) if !id.is_empty() => {
            let id = std::str::from_utf8(id)
                .ok()
                .filter(|id| valid_sandbox_id(id))
                .ok_or_else(|| BadRequest::InvalidIdHeader(header_name(&cfg.sandbox_header)))?;
            let port = match port {
                HeaderField::One(p) => parse_port(p)
                    .ok_or_else(|| BadRequest::InvalidPortHeader(header_name(&cfg.port_header)))?,
                _ => cfg.default_port,
            };
            Some((id, port, Source::Header))
        }
        (_, HeaderField::One(_)) => {
            return Err(BadRequest::PortWithoutId {
                header: header_name(&cfg.port_header),
                id_header: header_name(&cfg.sandbox_header),
            });
        }
        _ => None,
    };
    let chosen = match from_headers {
        Some(c) => Some(c),
        None => match req.authority {
            Some(a) => from_host(a)?.map(|(id, port)| (id, port, Source::Host)),
            None => None,
        },
    };
    let path_form = match req.path {
        Some(p) => from_path(p, &cfg.path_prefix),
        None => Ok(None),
    };
    match chosen {
        Some((id, port, source)) => {
            // The path form is rewritten only when it names the same sandbox; a malformed or
            // foreign `/kruise/…` path belongs to the application.
            let rewrite_path = match path_form {
                Ok(Some((pid, _, rewritten))) if pid == id => Some(rewritten),
                _ => None,
            };
            Ok(Some(Target {
                id,
                port,
                source,
                rewrite_path,
            }))
        }
        None => Ok(path_form?.map(|(id, port, rewritten)| Target {
            id,
            port,
            source: Source::Path,
            rewrite_path: Some(rewritten),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req<'a>(
        id: Option<&'a str>,
        port: Option<&'a str>,
        authority: Option<&'a str>,
        path: Option<&'a str>,
    ) -> Incoming<'a> {
        let f =
            |v: Option<&'a str>| v.map_or(HeaderField::Absent, |v| HeaderField::One(v.as_bytes()));
        Incoming {
            sandbox_id: f(id),
            sandbox_port: f(port),
            authority: authority.map(str::as_bytes),
            path: path.map(str::as_bytes),
        }
    }

    fn id_port(
        r: Result<Option<Target<'_>>, BadRequest>,
    ) -> Option<(String, u16, Source, Option<String>)> {
        r.unwrap()
            .map(|t| (t.id.to_string(), t.port, t.source, t.rewrite_path))
    }

    #[test]
    fn header_form_with_and_without_port() {
        let c = IdentifyConfig::default();
        assert_eq!(
            id_port(identify(
                &c,
                &req(Some("sbx"), Some("8080"), None, Some("/x"))
            )),
            Some(("sbx".into(), 8080, Source::Header, None))
        );
        assert_eq!(
            id_port(identify(&c, &req(Some("sbx"), None, None, Some("/x")))),
            Some(("sbx".into(), 49983, Source::Header, None)),
            "default port for the header form"
        );
    }

    #[test]
    fn header_beats_host_and_host_carries_port() {
        let c = IdentifyConfig::default();
        assert_eq!(
            id_port(identify(
                &c,
                &req(Some("a"), Some("49983"), Some("3000-b.example.com"), None)
            )),
            Some(("a".into(), 49983, Source::Header, None))
        );
        assert_eq!(
            id_port(identify(
                &c,
                &req(None, None, Some("3000-ns--my-box.example.com:443"), None)
            )),
            Some(("ns--my-box".into(), 3000, Source::Host, None))
        );
    }

    #[test]
    fn path_form_rewrites_and_keeps_query() {
        let c = IdentifyConfig::default();
        assert_eq!(
            id_port(identify(
                &c,
                &req(
                    None,
                    None,
                    Some("gw.local"),
                    Some("/kruise/ns--box/3000/api/v1/data?x=1")
                )
            )),
            Some((
                "ns--box".into(),
                3000,
                Source::Path,
                Some("/api/v1/data?x=1".into())
            ))
        );
        assert_eq!(
            id_port(identify(
                &c,
                &req(None, None, None, Some("/kruise/box/8080"))
            )),
            Some(("box".into(), 8080, Source::Path, Some("/".into())))
        );
        assert_eq!(
            id_port(identify(
                &c,
                &req(None, None, None, Some("/kruise/box/8080?q"))
            )),
            Some(("box".into(), 8080, Source::Path, Some("/?q".into())))
        );
    }

    #[test]
    fn path_is_rewritten_when_header_names_the_same_sandbox_only() {
        let c = IdentifyConfig::default();
        assert_eq!(
            id_port(identify(
                &c,
                &req(
                    Some("box"),
                    Some("49983"),
                    None,
                    Some("/kruise/box/49983/files?path=a")
                )
            )),
            Some((
                "box".into(),
                49983,
                Source::Header,
                Some("/files?path=a".into())
            ))
        );
        assert_eq!(
            id_port(identify(
                &c,
                &req(Some("other"), None, None, Some("/kruise/box/49983/files"))
            )),
            Some(("other".into(), 49983, Source::Header, None))
        );
    }

    #[test]
    fn requests_without_a_sandbox_are_none() {
        let c = IdentifyConfig::default();
        for r in [
            req(None, None, None, None),
            req(Some(""), None, None, Some("/")),
            req(None, None, Some("api.example.com"), Some("/v2/sandboxes")),
            req(
                None,
                None,
                Some("example.com"),
                Some("/kruise/api/sandboxes"),
            ),
            req(None, None, Some("localhost:10000"), Some("/kruise/box")),
            req(None, None, Some("[::1]:10000"), Some("/")),
            req(None, None, Some("abc-def.example.com"), Some("/")),
            req(None, None, Some("3000-.example.com"), Some("/")),
            req(None, None, Some("3000-box"), Some("/")),
        ] {
            assert_eq!(identify(&c, &r), Ok(None), "{r:?}");
        }
    }

    #[test]
    fn malformed_identification_is_a_bad_request() {
        let c = IdentifyConfig::default();
        assert!(matches!(
            identify(&c, &req(None, Some("49983"), None, None)),
            Err(BadRequest::PortWithoutId { .. })
        ));
        for port in ["abc", "0", "65536", "-1", "", " 80", "123456", "+80"] {
            assert!(
                matches!(
                    identify(&c, &req(Some("a"), Some(port), None, None)),
                    Err(BadRequest::InvalidPortHeader(_))
                ),
                "port {port:?}"
            );
        }
        assert!(matches!(
            identify(&c, &req(Some("a/b"), None, None, None)),
            Err(BadRequest::InvalidIdHeader(_))
        ));
        assert!(matches!(
            identify(&c, &req(None, None, Some("99999-box.example.com"), None)),
            Err(BadRequest::InvalidHostPort(_))
        ));
        assert_eq!(
            identify(&c, &req(None, None, None, Some("/kruise/box/http/x"))),
            Err(BadRequest::InvalidPath)
        );
        assert_eq!(
            identify(&c, &req(None, None, None, Some("/kruise/b%2f/80/x"))),
            Err(BadRequest::InvalidPath)
        );
        let repeated = Incoming {
            sandbox_id: HeaderField::Repeated,
            ..req(None, None, None, None)
        };
        assert!(matches!(
            identify(&c, &repeated),
            Err(BadRequest::Repeated(_))
        ));
    }

    #[test]
    fn port_parsing_bounds() {
        assert_eq!(parse_port(b"1"), Some(1));
        assert_eq!(parse_port(b"65535"), Some(65535));
        assert_eq!(parse_port(b"049983"), None, "more than five digits");
        assert_eq!(parse_port(b"08080"), Some(8080));
        assert_eq!(parse_port(b"0"), None);
        assert_eq!(parse_port(b"65536"), None);
    }

    fn id_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9-]{0,40}"
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(
            id in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            port in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            authority in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
            path in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..120)),
        ) {
            fn f(v: &Option<Vec<u8>>) -> HeaderField<'_> {
                v.as_deref().map_or(HeaderField::Absent, HeaderField::One)
            }
            let r = Incoming { sandbox_id: f(&id), sandbox_port: f(&port), authority: authority.as_deref(), path: path.as_deref() };
            let _ = identify(&IdentifyConfig::default(), &r);
        }

        #[test]
        fn host_form_round_trips(id in id_strategy(), port in 1u16..=65535, domain in "[a-z]{1,10}\\.[a-z]{2,5}") {
            let host = format!("{port}-{id}.{domain}");
            let r = req(None, None, Some(&host), Some("/"));
            let t = identify(&IdentifyConfig::default(), &r).unwrap().unwrap();
            prop_assert_eq!(t.id, id.as_str());
            prop_assert_eq!(t.port, port);
        }

        #[test]
        fn path_form_round_trips(id in id_strategy(), port in 1u16..=65535, rest in "[a-z0-9/._-]{0,30}") {
            prop_assume!(id != "api");
            let path = format!("/kruise/{id}/{port}/{rest}");
            let r = req(None, None, Some("gw"), Some(&path));
            let t = identify(&IdentifyConfig::default(), &r).unwrap().unwrap();
            prop_assert_eq!(t.id, id.as_str());
            prop_assert_eq!(t.port, port);
            prop_assert_eq!(t.rewrite_path, Some(format!("/{rest}")));
        }

        #[test]
        fn header_form_round_trips(id in id_strategy(), port in 1u16..=65535) {
            let p = port.to_string();
            let r = req(Some(&id), Some(&p), None, None);
            let t = identify(&IdentifyConfig::default(), &r).unwrap().unwrap();
            prop_assert_eq!(t.id, id.as_str());
            prop_assert_eq!(t.port, port);
        }
    }
}
