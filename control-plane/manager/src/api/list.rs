//! `GET /v2/sandboxes` (and v1 `GET /sandboxes`): the query as the SDK encodes it, filters,
//! order, and `X-Next-Token` paging (no token on the last page).

use std::collections::BTreeMap;

use base64::Engine;
use jiff::Timestamp;

use super::error::{ApiError, ApiResult};
use crate::model::{SandboxRecord, SandboxState};

/// Default and largest page size.
pub const MAX_LIMIT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Newest `startedAt` first (the default).
    Desc,
    Asc,
}

/// A parsed list query.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub states: Vec<SandboxState>,
    pub metadata: BTreeMap<String, String>,
    pub limit: usize,
    pub next_token: Option<Cursor>,
    pub order: Order,
    pub template: Option<String>,
    pub started_after: Option<Timestamp>,
}

/// Where the previous page ended: the last item's start time and id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub started_at: Timestamp,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

/// Decodes `%XX` escapes and `+` (query-string form).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `metadata` parameter as infra decodes it: the (already framework-decoded) value is
/// query-unescaped once more, split on `&` and `=`, and each key and value unescaped again
/// (`urlencode({quote(k): quote(v)})` by the SDK, then httpx's own encoding).
pub fn parse_metadata_filter(value: &str) -> BTreeMap<String, String> {
    let once = percent_decode(value);
    once.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((percent_decode(k), percent_decode(v)))
        })
        .collect()
}

/// Parses the raw query string.
pub fn parse(raw: Option<&str>) -> ApiResult<ListQuery> {
    let mut q = ListQuery {
        states: vec![SandboxState::Running, SandboxState::Paused],
        metadata: BTreeMap::new(),
        limit: MAX_LIMIT,
        next_token: None,
        order: Order::Desc,
        template: None,
        started_after: None,
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        match k.as_str() {
            "state" => {
                q.states = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| match s {
                        "running" => Ok(SandboxState::Running),
                        "paused" => Ok(SandboxState::Paused),
                        other => Err(ApiError::bad_request(format!(
                            "invalid state {other:?}: expected running or paused"
                        ))),
                    })
                    .collect::<ApiResult<_>>()?;
            }
            "metadata" => q.metadata.extend(parse_metadata_filter(&v)),
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "invalid limit {v:?}: expected 1 to {MAX_LIMIT}"
                        ))
                    })?
            }
            "nextToken" => {
                q.next_token = Some(
                    Cursor::decode(&v).ok_or_else(|| ApiError::bad_request("invalid nextToken"))?,
                )
            }
            "order" => {
                q.order = match v.as_str() {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "invalid order {other:?}: expected asc or desc"
                        )));
                    }
                }
            }
            "template" => q.template = Some(v),
            "startedAfter" => {
                q.started_after = Some(v.parse::<Timestamp>().map_err(|e| {
                    ApiError::bad_request(format!("invalid startedAfter {v:?}: {e}"))
                })?)
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Filters, orders and pages `items`: the page and the token of the next page, if any.
pub fn page(mut items: Vec<SandboxRecord>, q: &ListQuery) -> (Vec<SandboxRecord>, Option<String>) {
    items.retain(|r| {
        q.states.contains(&r.state)
            && q.metadata
                .iter()
                .all(|(k, v)| r.metadata.get(k).or_else(|| r.labels.get(k)) == Some(v))
            && q.template
                .as_ref()
                .is_none_or(|t| &r.template_id == t || r.alias.as_ref() == Some(t))
            && q.started_after.is_none_or(|t| r.started_at >= t)
    });
    let key = |r: &SandboxRecord| (r.started_at, r.id.as_str().to_string());
    items.sort_by_key(key);
    if q.order == Order::Desc {
        items.reverse();
    }
    if let Some(c) = &q.next_token {
        let after = (c.started_at, c.id.clone());
        items.retain(|r| match q.order {
            Order::Asc => key(r) > after,
            Order::Desc => key(r) < after,
        });
    }
    let more = items.len() > q.limit;
    items.truncate(q.limit);
    let token = more.then(|| items.last()).flatten().map(|r| {
        Cursor {
            started_at: r.started_at,
            id: r.id.as_str().to_string(),
        }
        .encode()
    });
    (items, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lifecycle, SandboxId};

    fn rec(id: &str, secs: i64, state: SandboxState, meta: &[(&str, &str)]) -> SandboxRecord {
        SandboxRecord {
            id: SandboxId::parse(id).unwrap(),
            team_id: "t".into(),
            owner_key_id: "k".into(),
            template_id: "base".into(),
            alias: None,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: BTreeMap::new(),
            envd_access_token: None,
            started_at: Timestamp::from_second(secs).unwrap(),
            end_at: None,
            state,
            lifecycle: Lifecycle::default(),
            cpu_count: 1,
            memory_mb: 1,
            disk_size_mb: 1,
            allow_internet_access: None,
            ip: None,
            return_ip: false,
            envd_version: "0.6.13".into(),
        }
    }

    #[test]
    fn metadata_filter_round_trips_the_sdk_encoding() {
        // The SDK's encoding of {"k": "v w", "a&b": "c=d"} as captured on the wire, after the
        // framework's own decoding of the query parameter.
        let raw = "metadata=k%3Dv%252520w%26a%252526b%3Dc%25253Dd&state=running%2Cpaused&limit=5";
        let q = parse(Some(raw)).unwrap();
        assert_eq!(q.metadata.get("k").map(String::as_str), Some("v w"));
        assert_eq!(q.metadata.get("a&b").map(String::as_str), Some("c=d"));
        assert_eq!(q.limit, 5);
        assert_eq!(q.states.len(), 2);
        for bad in [
            "state=dead",
            "limit=0",
            "limit=101",
            "order=up",
            "nextToken=%%",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn pages_newest_first_without_a_token_on_the_last_page() {
        let items: Vec<_> = (0..5)
            .map(|i| {
                rec(
                    &format!("s{i}"),
                    100 + i,
                    SandboxState::Running,
                    &[("u", "1")],
                )
            })
            .chain([rec("p", 50, SandboxState::Paused, &[])])
            .collect();
        let mut q = parse(Some("limit=2&state=running")).unwrap();
        let mut seen = Vec::new();
        loop {
            let (page, token) = page(items.clone(), &q);
            seen.extend(page.iter().map(|r| r.id.to_string()));
            match token {
                Some(t) => q.next_token = Some(Cursor::decode(&t).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, ["s4", "s3", "s2", "s1", "s0"]);
        let q = parse(Some("order=asc&metadata=u%3D1")).unwrap();
        let (page, token) = page(items, &q);
        assert_eq!(page.first().unwrap().id.as_str(), "s0");
        assert_eq!(page.len(), 5);
        assert!(token.is_none());
    }
}
