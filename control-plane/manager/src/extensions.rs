//! Metadata extension keys (`e2b.agents.kruise.io/<key>` in a create's `metadata`), upstream's
//! way to pass platform options through the unmodified SDK. Recognised keys are removed from
//! the metadata; `label:<k>` keys become labels. Keys that only mean something on Kubernetes are
//! refused by a backend that has none, naming the key.

use std::collections::BTreeMap;
use std::time::Duration;

/// The prefix of extension keys.
pub const PREFIX: &str = "e2b.agents.kruise.io/";
/// Reserved prefixes user metadata may not use.
pub const RESERVED_PREFIXES: [&str; 2] = [PREFIX, "agents.kruise.io/"];
/// Metadata key of the sandbox's IP in responses (`return-sandbox-ip`).
pub const SANDBOX_IP_KEY: &str = "e2b.agents.kruise.io/sandbox-ip";

/// Options that need Kubernetes (a pod to change, a volume to mount, an object to keep).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeExtensions {
    pub image: Option<String>,
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub csi_volume_name: Option<String>,
    pub csi_mount_point: Option<String>,
    pub csi_subpath: Option<String>,
    pub csi_volume_config: Option<String>,
    pub reserve_failed_sandbox: Option<String>,
    pub reserve_failed_sandbox_for: Option<String>,
    pub sandbox_name: Option<String>,
    pub sandbox_generate_name: Option<String>,
}

impl KubeExtensions {
    /// The keys given, in a fixed order.
    pub fn given(&self) -> impl Iterator<Item = &'static str> + '_ {
        let fields: [(&'static str, &Option<String>); 11] = [
            ("image", &self.image),
            ("cpu-request", &self.cpu_request),
            ("cpu-limit", &self.cpu_limit),
            ("csi-volume-name", &self.csi_volume_name),
            ("csi-mount-point", &self.csi_mount_point),
            ("csi-subpath", &self.csi_subpath),
            ("csi-volume-config", &self.csi_volume_config),
            ("reserve-failed-sandbox", &self.reserve_failed_sandbox),
            (
                "reserve-failed-sandbox-for",
                &self.reserve_failed_sandbox_for,
            ),
            ("sandbox-name", &self.sandbox_name),
            ("sandbox-generate-name", &self.sandbox_generate_name),
        ];
        fields
            .into_iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
    }

    /// The first key given, for "needs Kubernetes" errors.
    pub fn first_key(&self) -> Option<&'static str> {
        self.given().next()
    }
}

/// The parsed extension keys of a create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extensions {
    pub never_timeout: bool,
    pub skip_init_runtime: bool,
    pub return_sandbox_ip: bool,
    /// Bound for the whole claim (taking from the pool or starting one).
    pub claim_timeout: Option<Duration>,
    /// Bound for a newly started sandbox to become ready.
    pub wait_ready_timeout: Option<Duration>,
    /// Start a sandbox when the pool is empty (default true; only `false` disables).
    pub create_on_no_stock: bool,
    /// How long a paused sandbox is kept (`None`: forever).
    pub reserve_paused_for: Option<Duration>,
    pub kube: KubeExtensions,
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions {
            never_timeout: false,
            skip_init_runtime: false,
            return_sandbox_ip: false,
            claim_timeout: None,
            wait_ready_timeout: None,
            create_on_no_stock: true,
            reserve_paused_for: None,
            kube: KubeExtensions::default(),
        }
    }
}

/// Metadata split into its parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedMetadata {
    pub metadata: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub extensions: Extensions,
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!(
            "Bad extension param: {PREFIX}{key} must be \"true\" or \"false\", got {v:?}"
        )),
    }
}

fn parse_seconds(key: &str, v: &str) -> Result<Option<Duration>, String> {
    let n: i64 = v.trim().parse().map_err(|_| {
        format!(
            "Bad extension param: {PREFIX}{key} must be an integer number of seconds, got {v:?}"
        )
    })?;
    Ok((n > 0).then(|| Duration::from_secs(n as u64)))
}

/// Parses a Go-style duration as upstream writes them (`90s`, `5m`, `2h`, `1h30m`) or `forever`.
pub fn parse_retention(v: &str) -> Result<Option<Duration>, String> {
    if v == "forever" {
        return Ok(None);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in v.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("invalid duration {v:?}")),
        };
        let n: u64 = num.parse().map_err(|_| format!("invalid duration {v:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any || total == 0 {
        return Err(format!(
            "invalid duration {v:?}: expected forever or a positive duration such as 90s, 5m, 2h"
        ));
    }
    Ok(Some(Duration::from_secs(total)))
}

/// Splits create metadata into user metadata, labels and extensions. Unknown keys under the
/// reserved prefixes, empty label names and bad values are errors (400), naming the key.
pub fn parse(raw: &BTreeMap<String, String>) -> Result<ParsedMetadata, String> {
    let mut out = ParsedMetadata::default();
    let ext = &mut out.extensions;
    for (k, v) in raw {
        if let Some(label) = k.strip_prefix("label:") {
            if label.is_empty() || RESERVED_PREFIXES.iter().any(|p| label.starts_with(p)) {
                return Err(format!("Bad extension param: invalid label key {k:?}"));
            }
            out.labels.insert(label.to_string(), v.clone());
            continue;
        }
        let Some(key) = k.strip_prefix(PREFIX) else {
            if k.starts_with(RESERVED_PREFIXES[1]) {
                return Err(format!("Forbidden metadata key {k:?}"));
            }
            out.metadata.insert(k.clone(), v.clone());
            continue;
        };
        let kube = &mut ext.kube;
        match key {
            "never-timeout" => ext.never_timeout = parse_bool(key, v)?,
            "skip-init-runtime" => ext.skip_init_runtime = parse_bool(key, v)?,
            "return-sandbox-ip" => ext.return_sandbox_ip = parse_bool(key, v)?,
            "claim-timeout-seconds" => ext.claim_timeout = parse_seconds(key, v)?,
            "wait-ready-timeout-seconds" => ext.wait_ready_timeout = parse_seconds(key, v)?,
            "create-on-no-stock" => ext.create_on_no_stock = v != "false",
            "reserve-paused-sandbox-duration" => {
                ext.reserve_paused_for = parse_retention(v)
                    .map_err(|e| format!("Bad extension param: {PREFIX}{key}: {e}"))?
            }
            "image" => kube.image = Some(v.clone()),
            "cpu-request" => kube.cpu_request = Some(v.clone()),
            "cpu-limit" => kube.cpu_limit = Some(v.clone()),
            "csi-volume-name" => kube.csi_volume_name = Some(v.clone()),
            "csi-mount-point" => kube.csi_mount_point = Some(v.clone()),
            "csi-subpath" => kube.csi_subpath = Some(v.clone()),
            "csi-volume-config" => kube.csi_volume_config = Some(v.clone()),
            "reserve-failed-sandbox" => kube.reserve_failed_sandbox = Some(v.clone()),
            "reserve-failed-sandbox-for" => kube.reserve_failed_sandbox_for = Some(v.clone()),
            "sandbox-name" => kube.sandbox_name = Some(v.clone()),
            "sandbox-generate-name" => kube.sandbox_generate_name = Some(v.clone()),
            _ => return Err(format!("Bad extension param: unknown key {k:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn splits_metadata_labels_and_extensions() {
        let p = parse(&m(&[
            ("userId", "42"),
            ("label:app", "web"),
            ("e2b.agents.kruise.io/never-timeout", "true"),
            ("e2b.agents.kruise.io/claim-timeout-seconds", "7"),
            ("e2b.agents.kruise.io/create-on-no-stock", "no"),
            ("e2b.agents.kruise.io/image", "busybox"),
        ]))
        .unwrap();
        assert_eq!(p.metadata, m(&[("userId", "42")]));
        assert_eq!(p.labels, m(&[("app", "web")]));
        assert!(p.extensions.never_timeout);
        assert_eq!(p.extensions.claim_timeout, Some(Duration::from_secs(7)));
        assert!(p.extensions.create_on_no_stock, "only \"false\" disables");
        assert_eq!(p.extensions.kube.first_key(), Some("image"));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (k, v) in [
            ("e2b.agents.kruise.io/never-timeout", "yes"),
            ("e2b.agents.kruise.io/claim-timeout-seconds", "x"),
            ("e2b.agents.kruise.io/what", "1"),
            ("agents.kruise.io/owner", "me"),
            ("label:", "x"),
        ] {
            let e = parse(&m(&[(k, v)])).unwrap_err();
            assert!(e.contains(k.trim_start_matches("label:")), "{e}");
        }
    }

    #[test]
    fn retention_durations() {
        assert_eq!(parse_retention("forever").unwrap(), None);
        assert_eq!(
            parse_retention("1h30m").unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_retention("90s").unwrap(),
            Some(Duration::from_secs(90))
        );
        for bad in ["", "5", "0s", "5d", "m"] {
            assert!(parse_retention(bad).is_err(), "{bad:?}");
        }
    }
}
