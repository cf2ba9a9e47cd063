//! Templates of the local backend: a small YAML file (`--templates`) with a built-in `base`, the
//! E2B SDK's default template, so `Sandbox.create()` works with no file at all.
//!
//! ```yaml
//! templates:
//!   - id: base              # the templateID clients ask for
//!     aliases: [default]    # other names for it
//!     pool_size: 2          # warm sandboxes kept ready
//!     env: {LANG: C.UTF-8}  # environment of every process in its sandboxes
//!     workdir: ""           # default cwd (empty: the sandbox's home)
//!     setup: "echo hi > ready.txt"   # run once in each new sandbox's home before it is offered
//!     services:             # processes started beside the runtime in every sandbox
//!       - name: code-interpreter
//!         command: [code-interpreter, --listen, "{ip}:49999"]   # {ip} {port} {home} {workdir}
//!         port: 49999
//!         health_path: /health   # must answer 2xx before the sandbox is offered
//!     cpu_count: 2          # reported only (local sandboxes share the host)
//!     memory_mb: 512
//!     disk_size_mb: 1024
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One template.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: String,
    #[serde(default)]
    pub setup: Option<String>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default = "default_cpu")]
    pub cpu_count: u32,
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    #[serde(default = "default_disk")]
    pub disk_size_mb: u64,
}

/// A process started beside the runtime in every sandbox of a template (in the same cgroup,
/// with the same marker, killed with it), e.g. the code interpreter on port 49999.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Program and arguments; `{ip}`, `{port}`, `{home}` and `{workdir}` are replaced.
    pub command: Vec<String>,
    pub port: u16,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_health_path() -> String {
    "/health".into()
}

fn default_pool() -> usize {
    2
}
fn default_cpu() -> u32 {
    2
}
fn default_memory() -> u64 {
    512
}
fn default_disk() -> u64 {
    1024
}

impl Template {
    /// The built-in `base` template with `pool_size` warm sandboxes.
    pub fn base(pool_size: usize) -> Template {
        Template {
            id: "base".into(),
            aliases: Vec::new(),
            pool_size,
            env: BTreeMap::new(),
            workdir: String::new(),
            setup: None,
            services: Vec::new(),
            cpu_count: default_cpu(),
            memory_mb: default_memory(),
            disk_size_mb: default_disk(),
        }
    }

    /// Whether `name` is this template's id or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.id == name || self.aliases.iter().any(|a| a == name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatesFile {
    templates: Vec<Template>,
}

/// Largest warm pool a template may ask for.
pub const MAX_POOL: usize = 1000;

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':'))
}

/// The templates to serve: those of `file` (if any) plus the built-in `base` unless the file
/// defines it. Names must be unique across ids and aliases.
pub fn load(file: Option<&Path>, base_pool: usize) -> Result<Vec<Template>, String> {
    let mut list = match file {
        None => Vec::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let f: TemplatesFile =
                serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            f.templates
        }
    };
    if !list.iter().any(|t| t.answers_to("base")) {
        list.insert(0, Template::base(base_pool));
    }
    let mut seen = std::collections::HashSet::new();
    for t in &list {
        for name in std::iter::once(&t.id).chain(&t.aliases) {
            if !valid_name(name) {
                return Err(format!("invalid template name {name:?}"));
            }
            if !seen.insert(name.clone()) {
                return Err(format!("template name {name:?} is used twice"));
            }
        }
        if t.pool_size > MAX_POOL {
            return Err(format!(
                "template {}: pool_size {} is above {MAX_POOL}",
                t.id, t.pool_size
            ));
        }
        for k in t
            .env
            .keys()
            .chain(t.services.iter().flat_map(|s| s.env.keys()))
        {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("template {}: invalid env name {k:?}", t.id));
            }
        }
        let mut ports = std::collections::HashSet::from([crate::local::runtime::ENVD_PORT]);
        for svc in &t.services {
            if svc.command.is_empty() || svc.name.is_empty() || !valid_name(&svc.name) {
                return Err(format!(
                    "template {}: a service needs a name and a command",
                    t.id
                ));
            }
            if svc.port == 0 || !ports.insert(svc.port) {
                return Err(format!(
                    "template {}: service {} needs a port of its own (not 0 or 49983)",
                    t.id, svc.name
                ));
            }
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_base_and_file_templates() {
        let t = load(None, 3).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].id.as_str(), t[0].pool_size), ("base", 3));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.yaml");
        std::fs::write(
            &p,
            "templates:\n- id: py\n  aliases: [python]\n  pool_size: 1\n  env: {A: b}\n  setup: touch x\n  services: [{name: web, command: [x, '{ip}'], port: 8080}]\n",
        )
        .unwrap();
        let t = load(Some(&p), 2).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[1].answers_to("python"));
        assert_eq!(t[1].setup.as_deref(), Some("touch x"));
        assert_eq!(t[1].services[0].health_path, "/health");
        std::fs::write(
            &p,
            "templates:\n- id: a\n  services: [{name: s, command: [x], port: 49983}]\n",
        )
        .unwrap();
        assert!(load(Some(&p), 2).unwrap_err().contains("port"));
        std::fs::write(&p, "templates:\n- id: a\n  aliases: [a]\n").unwrap();
        assert!(load(Some(&p), 2).unwrap_err().contains("twice"));
        std::fs::write(&p, "templates:\n- id: a\n  pool: 3\n").unwrap();
        assert!(load(Some(&p), 2).is_err(), "unknown fields are errors");
    }
}
