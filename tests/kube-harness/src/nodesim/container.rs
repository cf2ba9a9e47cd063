//! Containers of known images: the simulator runs a local binary standing for the image, with
//! the container's arguments, environment and mounted ConfigMaps/Secrets, as a kubelet would
//! start it. This is how `helm install` of the project's own charts brings up processes that
//! really serve (tests/charts/test_install.py).
//!
//! What a container sees, and how it is emulated without a container runtime:
//! - **Image → program.** An [`ImageRule`] maps an image repository (any tag) to a command; the
//!   container's `command[0]` (or, without `command`, the image entrypoint) is that command, and
//!   the rest of `command` and `args` follow, with `$(VAR)` expanded as the kubelet does.
//! - **Environment.** `value`, `fieldRef` (metadata.name/namespace/uid, status.podIP,
//!   status.hostIP, spec.nodeName, spec.serviceAccountName), `secretKeyRef` and
//!   `configMapKeyRef` (read from the API).
//! - **Volumes.** `configMap` and `secret` volumes are written to files, `emptyDir` is a
//!   directory; a mount path in the arguments or environment is replaced by its directory.
//! - **Network namespace.** In a pod, `0.0.0.0` and `127.0.0.1` are the pod's own; here they
//!   become the pod IP in the arguments and environment (files are left as they are).
//! - **Services.** `<svc>.<ns>.svc[.cluster.local]` in the arguments, environment and mounted
//!   files becomes an address of the simulator's service proxy (kube-proxy's userspace mode:
//!   one loopback address per Service, each port forwarded to a ready endpoint pod).
//! - **Service account.** A kubeconfig with a token of the pod's service account (TokenRequest)
//!   in `KUBECONFIG`, so the process has exactly the RBAC the chart grants.
//! - **Readiness.** The container's readinessProbe (httpGet or tcpSocket, port by number or
//!   name); none: ready once started.
//!
//! Only the first container runs; init containers and the rest are not run.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Pod, Secret, ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};

use super::Shared;

/// A container image the simulator runs as a local program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRule {
    /// Image repository without tag or digest, e.g. `kruise-agents-rs/sandbox-manager`.
    pub repository: String,
    /// The program (and leading arguments) standing for the image's entrypoint.
    pub program: Vec<String>,
}

impl std::str::FromStr for ImageRule {
    type Err = String;

    /// `REPOSITORY=PROGRAM [ARGS...]` (whitespace-separated).
    fn from_str(s: &str) -> Result<Self, String> {
        let (repo, program) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected REPOSITORY=PROGRAM [ARGS...]"))?;
        let program: Vec<String> = program.split_whitespace().map(str::to_string).collect();
        if repo.is_empty() || program.is_empty() {
            return Err(format!("{s:?}: expected REPOSITORY=PROGRAM [ARGS...]"));
        }
        Ok(ImageRule {
            repository: repo.to_string(),
            program,
        })
    }
}

/// `registry/repo:tag@sha256:…` → `registry/repo` (a `:` before the last `/` is a registry port).
pub fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// The rule for the pod's first container, if its image has one.
pub(crate) fn rule_for<'a>(rules: &'a [ImageRule], pod: &Pod) -> Option<&'a ImageRule> {
    let image = pod.spec.as_ref()?.containers.first()?.image.as_deref()?;
    let repo = image_repository(image);
    rules.iter().find(|r| r.repository == repo)
}

/// When the pod counts as ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Tcp(u16),
    Http {
        port: u16,
        path: String,
    },
    /// No probe: ready once the process runs.
    Started,
}

/// A container turned into a local process.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub readiness: Readiness,
}

/// Everything a container needs that comes from the API or the disk.
pub(crate) async fn prepare(
    shared: &Shared,
    pod: &Pod,
    rule: &ImageRule,
    ip: Ipv4Addr,
    dir: &Path,
) -> Result<Prepared, String> {
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let c = spec.containers.first().ok_or("pod without containers")?;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();

    let mounts = mount_volumes(shared, &ns, c, spec.volumes.as_deref().unwrap_or(&[]), dir).await?;
    let mut env = resolve_env(shared, pod, c, ip).await?;
    if spec.automount_service_account_token != Some(false) {
        let sa = spec.service_account_name.as_deref().unwrap_or("default");
        let path = write_kubeconfig(shared, &ns, sa, dir).await?;
        env.push(("KUBECONFIG".into(), path.display().to_string()));
    }

    let mut argv: Vec<String> = rule.program.clone();
    let command = c.command.as_deref().unwrap_or(&[]);
    argv.extend(command.iter().skip(1).cloned());
    argv.extend(c.args.iter().flatten().cloned());
    let rest: Vec<String> = argv
        .split_off(rule.program.len())
        .into_iter()
        .map(|a| expand(&a, &env))
        .collect();
    argv.extend(rest);

    // Services named anywhere the process looks get a proxy address.
    let mut texts: Vec<String> = argv.clone();
    texts.extend(env.iter().map(|(_, v)| v.clone()));
    texts.extend(
        mounts
            .files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok()),
    );
    let mut services = BTreeMap::new();
    for (host, svc_ns, svc) in service_hosts(&texts.join("\n")) {
        if let Some(addr) = shared.services.address(&svc_ns, &svc).await? {
            services.insert(host, addr.to_string());
        }
    }
    for f in &mounts.files {
        if let Ok(text) = std::fs::read_to_string(f) {
            let new = replace_hosts(&text, &services);
            if new != text {
                std::fs::write(f, new).map_err(|e| format!("write {}: {e}", f.display()))?;
            }
        }
    }
    let rewrite = |s: &str| {
        let s = replace_hosts(s, &services);
        let s = mounts.rewrite(&s);
        s.replace("0.0.0.0", &ip.to_string())
            .replace("127.0.0.1", &ip.to_string())
    };
    let mut argv: Vec<String> = argv
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i < rule.program.len() {
                a.clone()
            } else {
                rewrite(a)
            }
        })
        .collect();
    let env = env.into_iter().map(|(k, v)| (k, rewrite(&v))).collect();
    let program = argv.remove(0);
    Ok(Prepared {
        program,
        args: argv,
        env,
        readiness: readiness(c),
    })
}

/// `$(NAME)` → the value of an earlier variable; `$$(NAME)` → `$(NAME)`; unknown names stay.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(")
            && let Some(end) = t.find(')')
        {
            let name = &t[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

async fn resolve_env(
    shared: &Shared,
    pod: &Pod,
    c: &Container,
    ip: Ipv4Addr,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        if let Some(v) = env_value(shared, pod, &ns, e, ip).await? {
            let v = expand(&v, &env);
            env.push((e.name.clone(), v));
        }
    }
    Ok(env)
}

async fn env_value(
    shared: &Shared,
    pod: &Pod,
    ns: &str,
    e: &EnvVar,
    ip: Ipv4Addr,
) -> Result<Option<String>, String> {
    if let Some(v) = &e.value {
        return Ok(Some(v.clone()));
    }
    let Some(from) = &e.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(f) = &from.field_ref {
        let spec = pod.spec.as_ref();
        let v = match f.field_path.as_str() {
            "metadata.name" => pod.metadata.name.clone(),
            "metadata.namespace" => pod.metadata.namespace.clone(),
            "metadata.uid" => pod.metadata.uid.clone(),
            "status.podIP" => Some(ip.to_string()),
            "status.hostIP" => Some(Ipv4Addr::LOCALHOST.to_string()),
            "spec.nodeName" => Some(shared.cfg.node_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            other => return Err(format!("env {}: fieldRef {other} is not simulated", e.name)),
        };
        return Ok(v);
    }
    if let Some(r) = &from.secret_key_ref {
        let api: Api<Secret> = Api::namespaced(shared.client.clone(), ns);
        let secret = api.get_opt(&r.name).await.map_err(|err| err.to_string())?;
        let v = secret.and_then(|s| s.data).and_then(|d| {
            d.get(&r.key)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        });
        return keyed(v, r.optional, || {
            format!(
                "env {}: secret {ns}/{} has no key {}",
                e.name, r.name, r.key
            )
        });
    }
    if let Some(r) = &from.config_map_key_ref {
        let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), ns);
        let cm = api.get_opt(&r.name).await.map_err(|err| err.to_string())?;
        let v = cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned());
        return keyed(v, r.optional, || {
            format!(
                "env {}: configmap {ns}/{} has no key {}",
                e.name, r.name, r.key
            )
        });
    }
    Err(format!("env {}: this valueFrom is not simulated", e.name))
}

/// A `secretKeyRef`/`configMapKeyRef` value: a missing key is an error unless the ref is
/// optional (then the variable is left out).
fn keyed(
    v: Option<String>,
    optional: Option<bool>,
    missing: impl FnOnce() -> String,
) -> Result<Option<String>, String> {
    match (v, optional) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(true)) => Ok(None),
        (None, _) => Err(missing()),
    }
}

/// Mounted volumes: mount path → local directory, and the files written.
struct Mounts {
    /// Longest mount path first, so `/etc/a/b` wins over `/etc/a`.
    paths: Vec<(String, PathBuf)>,
    files: Vec<PathBuf>,
}

impl Mounts {
    /// Mount paths that start a path in `s` (at the start, or after `=`, `:`, `,`, a quote or
    /// a space, and followed by `/` or the end of the path) become their directories, in one
    /// pass (a directory may itself lie under a mount path such as `/tmp`).
    fn rewrite(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        'scan: while i < s.len() {
            let at_start = i == 0 || s[..i].ends_with(['=', ':', ',', '"', '\'', ' ']);
            if at_start {
                for (mount, local) in &self.paths {
                    let rest = &s[i..];
                    if let Some(after) = rest.strip_prefix(mount.as_str())
                        && (after.is_empty() || after.starts_with(['/', '"', '\'', ' ', ',', ':']))
                    {
                        out.push_str(&local.display().to_string());
                        i += mount.len();
                        continue 'scan;
                    }
                }
            }
            let ch = s[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
        out
    }
}

async fn mount_volumes(
    shared: &Shared,
    ns: &str,
    c: &Container,
    volumes: &[Volume],
    dir: &Path,
) -> Result<Mounts, String> {
    let mut mounts = Mounts {
        paths: Vec::new(),
        files: Vec::new(),
    };
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volume mount {}: no such volume", m.name))?;
        let local = dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&local).map_err(|e| format!("create {}: {e}", local.display()))?;
        let data: BTreeMap<String, Vec<u8>> = if let Some(cm) = &v.config_map {
            let api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), ns);
            let obj = api.get_opt(&cm.name).await.map_err(|e| e.to_string())?;
            let obj = match (obj, cm.optional) {
                (Some(o), _) => o,
                (None, Some(true)) => ConfigMap::default(),
                (None, _) => {
                    return Err(format!(
                        "volume {}: configmap {ns}/{} not found",
                        v.name, cm.name
                    ));
                }
            };
            let mut d: BTreeMap<String, Vec<u8>> = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            d.extend(
                obj.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            select_items(d, cm.items.as_deref())
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(shared.client.clone(), ns);
            let obj = api.get_opt(&name).await.map_err(|e| e.to_string())?;
            let obj = match (obj, s.optional) {
                (Some(o), _) => o,
                (None, Some(true)) => Secret::default(),
                (None, _) => {
                    return Err(format!("volume {}: secret {ns}/{name} not found", v.name));
                }
            };
            let d = obj
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            select_items(d, s.items.as_deref())
        } else if v.empty_dir.is_some() {
            BTreeMap::new()
        } else {
            return Err(format!(
                "volume {}: only configMap, secret and emptyDir are simulated",
                v.name
            ));
        };
        for (path, bytes) in data {
            let f = local.join(&path);
            if let Some(parent) = f.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("create {}: {e}", parent.display()))?;
            }
            std::fs::write(&f, bytes).map_err(|e| format!("write {}: {e}", f.display()))?;
            mounts.files.push(f);
        }
        let target = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
            Some(sub) => local.join(sub),
            None => local,
        };
        mounts
            .paths
            .push((m.mount_path.trim_end_matches('/').to_string(), target));
    }
    mounts.paths.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    Ok(mounts)
}

fn select_items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => data,
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|b| (i.path.clone(), b.clone())))
            .collect(),
    }
}

/// A kubeconfig with a fresh token of service account `ns/sa`, for the pod's process.
async fn write_kubeconfig(
    shared: &Shared,
    ns: &str,
    sa: &str,
    dir: &Path,
) -> Result<PathBuf, String> {
    let api: Api<ServiceAccount> = Api::namespaced(shared.client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
            expiration_seconds: Some(24 * 3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("token for service account {ns}/{sa}: {e}"))?
        .status
        .map(|s| s.token)
        .ok_or_else(|| format!("token for service account {ns}/{sa}: empty answer"))?;
    let cfg = &shared.kube_config;
    let ca = cfg
        .root_cert
        .as_ref()
        .and_then(|certs| certs.first())
        .map(|der| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let pem = format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n");
            base64::engine::general_purpose::STANDARD.encode(pem)
        });
    let cluster = match ca {
        Some(ca) => format!("    certificate-authority-data: {ca}\n"),
        None => "    insecure-skip-tls-verify: true\n".to_string(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: {}\n{cluster}users:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: pod\n  context:\n    cluster: cluster\n    user: {sa}\n    namespace: {ns}\ncurrent-context: pod\n",
        cfg.cluster_url
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// `<svc>.<ns>.svc` and `<svc>.<ns>.svc.cluster.local` host names in `text`:
/// (the host as written, namespace, service).
fn service_hosts(text: &str) -> Vec<(String, String, String)> {
    let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let mut out = Vec::new();
    let mut start = 0;
    for (i, ch) in text.char_indices() {
        if label(ch) {
            continue;
        }
        push_host(&text[start..i], &mut out);
        start = i + ch.len_utf8();
    }
    push_host(&text[start..], &mut out);
    out.sort();
    out.dedup();
    out
}

fn push_host(word: &str, out: &mut Vec<(String, String, String)>) {
    let host = word.trim_matches('.');
    let base = host.strip_suffix(".cluster.local").unwrap_or(host);
    let Some(base) = base.strip_suffix(".svc") else {
        return;
    };
    let mut parts = base.split('.');
    if let (Some(svc), Some(ns), None) = (parts.next(), parts.next(), parts.next())
        && !svc.is_empty()
        && !ns.is_empty()
    {
        out.push((host.to_string(), ns.to_string(), svc.to_string()));
    }
}

/// Longest host names first, so `a.b.svc.cluster.local` is not cut to `a.b.svc`.
fn replace_hosts(s: &str, hosts: &BTreeMap<String, String>) -> String {
    let mut keys: Vec<&String> = hosts.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let mut out = s.to_string();
    for k in keys {
        out = out.replace(k.as_str(), &hosts[k]);
    }
    out
}

fn port_number(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn readiness(c: &Container) -> Readiness {
    let Some(p) = &c.readiness_probe else {
        return Readiness::Started;
    };
    if let Some(h) = &p.http_get
        && let Some(port) = port_number(c, &h.port)
    {
        return Readiness::Http {
            port,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
        };
    }
    if let Some(t) = &p.tcp_socket
        && let Some(port) = port_number(c, &t.port)
    {
        return Readiness::Tcp(port);
    }
    Readiness::Started
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_without_tags() {
        assert_eq!(image_repository("a/b:v1"), "a/b");
        assert_eq!(image_repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(
            image_repository("reg:5000/a/b:v1@sha256:00"),
            "reg:5000/a/b"
        );
        assert_eq!(image_repository("busybox"), "busybox");
    }

    #[test]
    fn rules_parse() {
        let r: ImageRule = "x/gw=env A=1 /bin/envoy".parse().unwrap();
        assert_eq!(r.repository, "x/gw");
        assert_eq!(r.program, vec!["env", "A=1", "/bin/envoy"]);
        assert!("x/gw=".parse::<ImageRule>().is_err());
        assert!("nothing".parse::<ImageRule>().is_err());
    }

    #[test]
    fn mount_paths_are_rewritten_once() {
        let m = Mounts {
            paths: vec![
                (
                    "/etc/envoy".into(),
                    PathBuf::from("/tmp/pod/volumes/bootstrap"),
                ),
                ("/tmp".into(), PathBuf::from("/tmp/pod/volumes/tmp")),
            ],
            files: Vec::new(),
        };
        assert_eq!(
            m.rewrite("--config-path=/etc/envoy/envoy.yaml"),
            "--config-path=/tmp/pod/volumes/bootstrap/envoy.yaml"
        );
        assert_eq!(m.rewrite("/tmp"), "/tmp/pod/volumes/tmp");
        assert_eq!(
            m.rewrite("/tmpfoo /etc/envoy2 x/tmp"),
            "/tmpfoo /etc/envoy2 x/tmp"
        );
    }

    #[test]
    fn kubelet_style_expansion() {
        let env = vec![("POD_NAME".to_string(), "gw-1".to_string())];
        assert_eq!(
            expand("--service-node=$(POD_NAME)", &env),
            "--service-node=gw-1"
        );
        assert_eq!(
            expand("$(MISSING) $$(POD_NAME) $x", &env),
            "$(MISSING) $(POD_NAME) $x"
        );
    }

    #[test]
    fn service_host_names_are_found_and_replaced() {
        let text = "--xds-address=http://sandbox-xds.sandbox-system.svc:18000\n\
                    address: api.default.svc.cluster.local\nnot: example.com svc x.svc";
        let hosts = service_hosts(text);
        assert_eq!(
            hosts,
            vec![
                (
                    "api.default.svc.cluster.local".into(),
                    "default".into(),
                    "api".into()
                ),
                (
                    "sandbox-xds.sandbox-system.svc".into(),
                    "sandbox-system".into(),
                    "sandbox-xds".into()
                ),
            ]
        );
        let map: BTreeMap<String, String> = hosts
            .into_iter()
            .map(|(h, _, _)| (h, "127.9.0.1".into()))
            .collect();
        assert_eq!(
            replace_hosts("http://sandbox-xds.sandbox-system.svc:18000", &map),
            "http://127.9.0.1:18000"
        );
    }
}
