//! The module as Envoy 1.40 loads it: ABI handshake, exported hooks and imported callbacks
//! against the real binary, config validation through `envoy --mode validate`, and a bad filter
//! config refused with the module's own explanation.

use std::process::Command;

use gateway_tests::envoy::{envoy_command, module_path, shipped_bootstrap, validate};
use gateway_tests::{GatewayBuilder, route};
use test_support::envoy_bin;

/// Every HTTP-filter hook Envoy 1.40 resolves as mandatory (reference: envoy-dynamic-modules.md,
/// Appendix C), plus the program-init handshake.
const REQUIRED_HOOKS: &[&str] = &[
    "envoy_dynamic_module_on_program_init",
    "envoy_dynamic_module_on_http_filter_config_new",
    "envoy_dynamic_module_on_http_filter_config_destroy",
    "envoy_dynamic_module_on_http_filter_new",
    "envoy_dynamic_module_on_http_filter_request_headers",
    "envoy_dynamic_module_on_http_filter_request_body",
    "envoy_dynamic_module_on_http_filter_request_trailers",
    "envoy_dynamic_module_on_http_filter_response_headers",
    "envoy_dynamic_module_on_http_filter_response_body",
    "envoy_dynamic_module_on_http_filter_response_trailers",
    "envoy_dynamic_module_on_http_filter_stream_complete",
    "envoy_dynamic_module_on_http_filter_destroy",
    "envoy_dynamic_module_on_http_filter_http_callout_done",
    "envoy_dynamic_module_on_http_filter_http_stream_headers",
    "envoy_dynamic_module_on_http_filter_http_stream_data",
    "envoy_dynamic_module_on_http_filter_http_stream_trailers",
    "envoy_dynamic_module_on_http_filter_http_stream_complete",
    "envoy_dynamic_module_on_http_filter_http_stream_reset",
    "envoy_dynamic_module_on_http_filter_scheduled",
    "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
    "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
];

fn dynamic_symbols(path: &std::path::Path, flag: &str) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-D", flag])
        .arg(path)
        .output()
        .expect("run nm");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

#[test]
fn module_exports_every_hook_and_imports_only_what_envoy_exports() {
    let module = module_path();
    let exported = dynamic_symbols(&module, "--defined-only");
    for hook in REQUIRED_HOOKS {
        assert!(
            exported.iter().any(|s| s == hook),
            "module does not export {hook}"
        );
    }
    let envoy_exports = dynamic_symbols(&envoy_bin(), "--defined-only");
    let imports: Vec<_> = dynamic_symbols(&module, "--undefined-only")
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_"))
        .collect();
    assert!(!imports.is_empty());
    for sym in &imports {
        assert!(
            envoy_exports.contains(sym),
            "module imports {sym}, which Envoy 1.40 does not export"
        );
    }
}

#[test]
fn shipped_bootstrap_validates_and_the_abi_version_matches() {
    let (ok, out) = validate(&shipped_bootstrap());
    assert!(ok, "{out}");
    assert!(
        out.contains("Dynamic module ABI version v0.2.0 matched."),
        "{out}"
    );
    assert!(out.contains("no route source configured"), "{out}");
}

fn write_config(builder: &GatewayBuilder, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gw-validate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        serde_yaml::to_string(&builder.render(10000, 9901, 9902)).unwrap(),
    )
    .unwrap();
    path
}

#[test]
fn bad_filter_configs_are_rejected_with_the_reason() {
    let cases = [
        (
            GatewayBuilder::new().set("sandbox_heder", "x".into()),
            "unknown field `sandbox_heder`",
        ),
        (
            GatewayBuilder::new().set("default_port", 0.into()),
            "default_port must be a port",
        ),
        (
            GatewayBuilder::new().set("routes_file", "/nonexistent/routes.json".into()),
            "cannot read routes_file",
        ),
        (
            GatewayBuilder::new().routes(vec![route("a", "not-an-ip", "running")]),
            "route #0 (a): ip \"not-an-ip\" is not an IPv4 or IPv6 address",
        ),
        (
            GatewayBuilder::new().routes(vec![route("a", "", "running")]),
            "state is running but the route has no ip",
        ),
    ];
    for (i, (builder, reason)) in cases.into_iter().enumerate() {
        let path = write_config(&builder, &format!("bad{i}"));
        let (ok, out) = validate(&path);
        assert!(!ok, "case {i} was accepted:\n{out}");
        assert!(
            out.contains(reason),
            "case {i}: expected {reason:?} in:\n{out}"
        );
        assert!(
            out.contains("Failed to initialize dynamic module")
                || out.contains("Failed to create filter config"),
            "{out}"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }
}

#[test]
fn good_configs_validate_including_the_string_form() {
    let path = write_config(
        &GatewayBuilder::new().routes(vec![route("a", "10.0.0.1", "running")]),
        "good",
    );
    let (ok, out) = validate(&path);
    assert!(ok, "{out}");
    assert!(out.contains("loaded with 1 static routes"), "{out}");
    // The filter config may also come as a StringValue holding JSON.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let fc = &mut yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0]["typed_config"]["filter_config"];
    *fc = serde_yaml::from_str(
        r#"{"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{\"routes\": [], \"table\": \"s\"}"}"#,
    )
    .unwrap();
    std::fs::write(&path, serde_yaml::to_string(&yaml).unwrap()).unwrap();
    let (ok, out) = validate(&path);
    assert!(ok, "{out}");
    assert!(
        out.contains("table \"s\" loaded with 0 static routes"),
        "{out}"
    );
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn envoy_refuses_to_start_with_a_bad_filter_config() {
    let path = write_config(
        &GatewayBuilder::new().set("envd_port", "x".into()),
        "refuse",
    );
    let out = envoy_command()
        .arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--base-id-path", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("invalid config") && text.contains("envd_port"),
        "{text}"
    );
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

#[test]
fn prometheus_sees_outcomes_as_labels() {
    let up = gateway_tests::Upstream::start("u", "127.0.0.1");
    let gw = GatewayBuilder::new()
        .routes(vec![route("s", "127.0.0.1", "running")])
        .start();
    let port = up.port().to_string();
    for _ in 0..3 {
        gateway_tests::request(
            gw.addr,
            "GET",
            "/",
            &[("e2b-sandbox-id", "s"), ("e2b-sandbox-port", &port)],
            None,
        );
    }
    gateway_tests::request(gw.addr, "GET", "/", &[("e2b-sandbox-id", "nope")], None);
    let m = gateway_tests::request(gw.metrics, "GET", "/metrics", &[], None).text();
    assert!(
        m.contains("envoy_sandbox_gateway_requests{outcome=\"routed\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("envoy_sandbox_gateway_requests{outcome=\"not_found\"} 1"),
        "{m}"
    );
    assert!(m.contains("envoy_sandbox_gateway_routes{} 1"), "{m}");
}
