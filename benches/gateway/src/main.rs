//! Gateway benchmark (not a test): in one run, on loopback, measures requests/s and p50/p99 for
//!
//! - (a) `plain`: Envoy with a plain route to a STATIC cluster and no filter;
//! - (a2) `odst`: Envoy with the ORIGINAL_DST cluster the module routes through, the upstream
//!   picked by the `x-envoy-original-dst-host` header and no filter (separates the cluster's cost
//!   from the module's);
//! - (b) `module`: Envoy with libsandbox_gateway.so and 100,000 routes (ORIGINAL_DST cluster);
//! - (b1) `module-1`: the same with a single route (shows lookup cost does not grow with size);
//! - (c) `ext_proc`: Envoy with an ext_proc router (a tonic server doing the same lookup), as in
//!   upstream's first design;
//!
//! all against the same upstream, with wrk. Configurations run interleaved for several rounds
//! and the medians are reported, with the ratios the budgets in DESIGN.md are stated in, plus
//! Envoy's memory per route at 100,000 routes. `make bench-gateway` runs it.

mod extproc;
mod upstream;
mod wrk;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

/// Envoy with and without the sandbox-gateway module, and an ext_proc router, side by side.
#[derive(Debug, Parser)]
struct Args {
    /// The Envoy 1.40 binary.
    #[arg(long, env = "ENVOY_BIN")]
    envoy: PathBuf,
    /// The module to load (build it with --release for meaningful numbers).
    #[arg(long, env = "SANDBOX_GATEWAY_MODULE")]
    module: PathBuf,
    /// Routes in the big table.
    #[arg(long, default_value_t = 100_000)]
    routes: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Interleaved rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections for the throughput runs.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Also write the results as a Markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// The benchmarked sandbox: the middle of the table.
fn bench_id(routes: usize) -> String {
    format!("sbx-{:06}", routes / 2)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, body.to_string()));
    }
    // De-chunk (admin answers are small and ASCII).
    let mut rest = body;
    let mut decoded = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16)?;
        if n == 0 || tail.len() < n {
            break;
        }
        decoded.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    Ok((status, decoded))
}

/// A running Envoy, killed on drop.
struct Envoy {
    name: &'static str,
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Envoy {
    fn start(
        args: &Args,
        dir: &Path,
        name: &'static str,
        listener: impl FnOnce(u16) -> Value,
        clusters: Vec<Value>,
    ) -> anyhow::Result<Envoy> {
        let (listen, admin) = (free_port()?, free_port()?);
        let config = json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": [listener(listen)], "clusters": clusters},
        });
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(&args.envoy)
            .arg("-c")
            .arg(&path)
            .args(["--disable-hot-restart", "-l", "warning", "--concurrency"])
            .arg(args.concurrency.to_string())
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                args.module.parent().context("module dir")?,
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start envoy")?;
        let mut e = Envoy {
            name,
            child,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen),
            admin: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), admin),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((200, _)) = http_get(e.admin, "/ready") {
                return Ok(e);
            }
            if let Some(status) = e.child.try_wait()? {
                bail!(
                    "envoy {name} exited with {status}; see {}",
                    dir.join(format!("{name}.log")).display()
                );
            }
            if Instant::now() > deadline {
                bail!("envoy {name} not ready in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Envoy's live heap (`/memory` allocated), bytes.
    fn allocated(&self) -> anyhow::Result<u64> {
        let (_, body) = http_get(self.admin, "/memory")?;
        let v: Value = serde_json::from_str(&body)?;
        v["allocated"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("allocated")
    }

    /// CPU time (user + system) the Envoy process has used so far, in microseconds.
    fn cpu_us(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks * 1e6 / hz)
    }

    /// Runs wrk and measures the Envoy CPU time per request during the run.
    fn measure(
        &self,
        headers: &[(&str, String)],
        connections: u32,
        seconds: u64,
    ) -> anyhow::Result<(wrk::Run, f64)> {
        let before = self.cpu_us()?;
        let run = wrk::run(&self.url(), headers, connections, seconds)?;
        let cpu = (self.cpu_us()? - before) / run.requests.max(1) as f64;
        Ok((run, cpu))
    }

    fn url(&self) -> String {
        format!("http://{}/", self.listen)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listener(port: u16, http_filters: Vec<Value>, cluster: &str) -> Value {
    let mut filters = http_filters;
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    json!({
        "name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}
                ]}]},
                "http_filters": filters,
            }
        }]}],
    })
}

fn module_filter(routes_file: &Path, table: &str) -> Value {
    json!({
        "name": "sandbox_gateway",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": "sandbox_gateway", "metrics_namespace": "sandbox"},
            "filter_name": "sandbox_gateway",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.Struct", "value": {
                "table": table, "sandbox_cluster": "sandboxes", "routes_file": routes_file,
            }},
        }
    })
}

fn original_dst(name: &str, by_header: bool) -> Value {
    let lb = if by_header {
        json!({"use_http_header": true})
    } else {
        json!({"metadata_key": {"key": "envoy.lb.original_dst", "path": [{"key": "host"}]}})
    };
    json!({"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "5s", "original_dst_lb_config": lb})
}

fn static_cluster(name: &str, addr: SocketAddr, http2: bool) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]},
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }});
    }
    c
}

/// The route table: ids `sbx-000000`…; the benchmarked id points at the upstream, the others at
/// made-up pod IPs. Every route carries an access-token digest, as real ones do.
fn make_routes(n: usize) -> (Vec<Value>, HashMap<String, IpAddr>) {
    let bench = bench_id(n);
    let mut json_routes = Vec::with_capacity(n);
    let mut map = HashMap::with_capacity(n);
    for i in 0..n {
        let id = format!("sbx-{i:06}");
        let ip = if id == bench {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
        };
        json_routes.push(json!({
            "id": id, "namespace": "team-a", "name": id,
            "uid": format!("6f1c2a3b-{:04x}-4c5d-8e9f-{:012x}", i % 65536, i),
            "resourceVersion": (1000 + i).to_string(), "ip": ip.to_string(), "state": "running",
            "accessTokenSha256": format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
        }));
        map.insert(id, ip);
    }
    (json_routes, map)
}

#[derive(Debug, Default, Clone)]
struct Series {
    saturated: Vec<wrk::Run>,
    single: Vec<wrk::Run>,
    /// Envoy CPU µs per request in the saturated runs.
    cpu: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

impl Series {
    fn rps(&self) -> f64 {
        median(self.saturated.iter().map(|r| r.rps).collect())
    }
    fn sat_p50(&self) -> f64 {
        median(self.saturated.iter().map(|r| r.p50_us).collect())
    }
    fn sat_p99(&self) -> f64 {
        median(self.saturated.iter().map(|r| r.p99_us).collect())
    }
    fn cpu(&self) -> f64 {
        median(self.cpu.clone())
    }
    fn p50(&self) -> f64 {
        median(self.single.iter().map(|r| r.p50_us).collect())
    }
    fn p99(&self) -> f64 {
        median(self.single.iter().map(|r| r.p99_us).collect())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.module.exists() {
        bail!(
            "module {} not found (make bench-gateway builds it)",
            args.module.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let upstream = upstream::start()?;
    eprintln!("upstream on {upstream}; building {} routes", args.routes);
    let (routes, map) = make_routes(args.routes);
    let big = dir.join("routes-big.json");
    std::fs::write(&big, serde_json::to_vec(&routes)?)?;
    let one = dir.join("routes-one.json");
    let single: Vec<_> = routes
        .iter()
        .filter(|r| r["id"] == bench_id(args.routes))
        .cloned()
        .collect();
    std::fs::write(&one, serde_json::to_vec(&single)?)?;
    let empty = dir.join("routes-empty.json");
    std::fs::write(&empty, b"[]")?;
    drop(routes);
    let ext_proc = extproc::start(map)?;

    // Memory per route: the module with the big table vs. the module with an empty one.
    let mem = {
        let e0 = Envoy::start(
            &args,
            &dir,
            "module-empty",
            |p| listener(p, vec![module_filter(&empty, "t0")], "sandboxes"),
            vec![original_dst("sandboxes", false)],
        )?;
        let e1 = Envoy::start(
            &args,
            &dir,
            "module-mem",
            |p| listener(p, vec![module_filter(&big, "t1")], "sandboxes"),
            vec![original_dst("sandboxes", false)],
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let (a0, a1) = (e0.allocated()?, e1.allocated()?);
        (a1.saturating_sub(a0)) as f64 / args.routes as f64
    };
    eprintln!("Envoy heap per route at {} routes: {mem:.0} B", args.routes);

    let ext_proc_filter = json!({
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "ext_proc"}, "timeout": "1s"},
            "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SKIP", "request_body_mode": "NONE", "response_body_mode": "NONE", "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"},
            "mutation_rules": {"allow_envoy": true},
        }
    });
    let started = Instant::now();
    let envoys = vec![
        Envoy::start(
            &args,
            &dir,
            "plain",
            |p| listener(p, vec![], "upstream"),
            vec![static_cluster("upstream", upstream, false)],
        )?,
        Envoy::start(
            &args,
            &dir,
            "odst",
            |p| listener(p, vec![], "sandboxes"),
            vec![original_dst("sandboxes", true)],
        )?,
        Envoy::start(
            &args,
            &dir,
            "module",
            |p| listener(p, vec![module_filter(&big, "big")], "sandboxes"),
            vec![original_dst("sandboxes", false)],
        )?,
        Envoy::start(
            &args,
            &dir,
            "module-1",
            |p| listener(p, vec![module_filter(&one, "one")], "sandboxes"),
            vec![original_dst("sandboxes", false)],
        )?,
        Envoy::start(
            &args,
            &dir,
            "ext_proc",
            |p| listener(p, vec![ext_proc_filter.clone()], "sandboxes"),
            vec![
                original_dst("sandboxes", true),
                static_cluster("ext_proc", ext_proc, true),
            ],
        )?,
    ];
    eprintln!("envoys ready in {:?}", started.elapsed());
    let headers = [
        ("e2b-sandbox-id", bench_id(args.routes)),
        ("e2b-sandbox-port", upstream.port().to_string()),
    ];

    // (a2) picks the upstream the way ORIGINAL_DST allows without a filter: by header.
    let mut by_header = headers.to_vec();
    by_header.push(("x-envoy-original-dst-host", upstream.to_string()));
    let headers_of = |e: &Envoy| -> &[(&str, String)] {
        if e.name == "odst" {
            &by_header
        } else {
            &headers
        }
    };

    // Correctness first: every configuration must actually reach the upstream.
    for e in &envoys {
        wrk::run(&e.url(), headers_of(e), 4, 1)
            .with_context(|| format!("warm-up of {}", e.name))?;
    }
    let mut series: Vec<Series> = vec![Series::default(); envoys.len()];
    for round in 0..args.rounds {
        for (e, s) in envoys.iter().zip(series.iter_mut()) {
            let (sat, cpu) = e.measure(headers_of(e), args.connections, args.seconds)?;
            let (one, _) = e.measure(headers_of(e), 1, (args.seconds / 2).max(2))?;
            eprintln!(
                "round {round} {:>9}: {:>9.0} req/s p50 {:>6.0}us p99 {:>6.0}us cpu {:>5.1}us/req | c=1 p50 {:>5.0}us p99 {:>5.0}us",
                e.name, sat.rps, sat.p50_us, sat.p99_us, cpu, one.p50_us, one.p99_us
            );
            s.saturated.push(sat);
            s.single.push(one);
            s.cpu.push(cpu);
        }
    }

    let (plain, odst, module, module1, ext) =
        (&series[0], &series[1], &series[2], &series[3], &series[4]);
    let mut md = String::new();
    md.push_str(&format!(
        "| configuration | req/s ({} conns) | Envoy CPU per request | p50 / p99 at {} conns | p50 / p99 at 1 conn |\n|---|---|---|---|---|\n",
        args.connections, args.connections
    ));
    let names = [
        "(a) Envoy, plain route, no filter".to_string(),
        "(a2) Envoy, ORIGINAL_DST cluster picked by header, no filter".to_string(),
        format!("(b) Envoy + sandbox_gateway, {} routes", args.routes),
        "(b1) Envoy + sandbox_gateway, 1 route".to_string(),
        format!("(c) Envoy + ext_proc router, {} routes", args.routes),
    ];
    for (name, s) in names.iter().zip(&series) {
        md.push_str(&format!(
            "| {name} | {:.0} | {:.1} µs | {:.0} µs / {:.0} µs | {:.0} µs / {:.0} µs |\n",
            s.rps(),
            s.cpu(),
            s.sat_p50(),
            s.sat_p99(),
            s.p50(),
            s.p99()
        ));
    }
    let rps_loss = (1.0 - module.rps() / plain.rps()) * 100.0;
    let added_p99 = module.p99() - plain.p99();
    let vs_ext = module.rps() / ext.rps();
    md.push_str(&format!(
        "\nRatios (medians of {} rounds of {} s): (b)/(a) requests/s = {:.3} ({:+.1} % {}; budget ≤ 5 % fewer); \
         added p99 at 1 connection = {:+.0} µs (budget ≤ 50 µs); added p99 at {} connections = {:+.0} µs; \
         Envoy CPU per request (b) − (a) = {:+.1} µs, of which the ORIGINAL_DST cluster (a2) − (a) = {:+.1} µs \
         and the module itself (b) − (a2) = {:+.1} µs; (b)/(a2) requests/s = {:.3}; \
         (b)/(c) = {:.2}× (budget ≥ 3×); (b)/(b1) = {:.3} (table size does not matter: O(1) lookup). \
         Envoy heap per route at {} routes: {:.0} B (budget ≤ 256 B).\n",
        args.rounds,
        args.seconds,
        module.rps() / plain.rps(),
        -rps_loss,
        if rps_loss > 0.0 { "fewer" } else { "more" },
        added_p99,
        args.connections,
        module.sat_p99() - plain.sat_p99(),
        module.cpu() - plain.cpu(),
        odst.cpu() - plain.cpu(),
        module.cpu() - odst.cpu(),
        module.rps() / odst.rps(),
        vs_ext,
        module.rps() / module1.rps(),
        args.routes,
        mem,
    ));
    println!("{md}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md)?;
    }
    drop(envoys);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
