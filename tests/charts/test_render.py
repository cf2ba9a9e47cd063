"""The charts render as the installation guide's parameter tables say: for every parameter, a
`--set` changes the rendered manifests in the way the table describes (and the default does not
already look like that), the required values fail with a message naming them, the guide's
examples render, and the rendered gateway bootstrap and sandbox-xds settings are valid for
Envoy 1.40 and sandbox-xds themselves."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from conftest import (
    ADMIN_KEY,
    CONTROLLER_CHART,
    MANAGER_CHART,
    REQUIRED,
    container,
    env_of,
    find,
    has,
    helm,
    render,
    render_error,
    tool,
)


def holds(check, docs) -> bool:
    """The check on one rendering; a missing field or object counts as not holding."""
    try:
        return bool(check(docs))
    except (KeyError, IndexError, TypeError):
        return False


def ctl(docs):
    return find(docs, "Deployment")


def ctl_c(docs):
    return container(ctl(docs))


def pod(deploy):
    return deploy["spec"]["template"]["spec"]


# (the --set arguments, what must hold after them and not before)
CONTROLLER_PARAMS = [
    (["replicaCount=3"], lambda d: ctl(d)["spec"]["replicas"] == 3),
    (["image.repository=mirror.example/ctl"], lambda d: ctl_c(d)["image"].startswith("mirror.example/ctl:")),
    (["image.tag=v9.9.9"], lambda d: ctl_c(d)["image"].endswith(":v9.9.9")),
    (["image.pullPolicy=Always"], lambda d: ctl_c(d)["imagePullPolicy"] == "Always"),
    (["webhook.port=9444"], lambda d: "--webhook-bind-address=0.0.0.0:9444" in ctl_c(d)["args"]
     and {"name": "webhook", "containerPort": 9444} in ctl_c(d)["ports"]),
    (["metrics.port=8444"], lambda d: "--metrics-bind-address=0.0.0.0:8444" in ctl_c(d)["args"]
     and find(d, "Service", "sandbox-controller-metrics")["spec"]["ports"][0]["port"] == 8444),
    (["healthProbe.port=8082"], lambda d: "--health-probe-bind-address=0.0.0.0:8082" in ctl_c(d)["args"]),
    (["resources.limits.cpu=4"], lambda d: ctl_c(d)["resources"]["limits"]["cpu"] == 4),
    (["resources.limits.memory=8Gi"], lambda d: ctl_c(d)["resources"]["limits"]["memory"] == "8Gi"),
    (["resources.requests.cpu=1"], lambda d: ctl_c(d)["resources"]["requests"]["cpu"] == 1),
    (["resources.requests.memory=2Gi"], lambda d: ctl_c(d)["resources"]["requests"]["memory"] == "2Gi"),
    (["namespace.name=agents"], lambda d: ctl(d)["metadata"]["namespace"] == "agents"
     and find(d, "ConfigMap", "sandbox-injection-config")["metadata"]["namespace"] == "agents"
     and "--leader-elect-namespace=agents" in ctl_c(d)["args"]),
    (["serviceAccount.create=false"], lambda d: not has(d, "ServiceAccount")),
    (["serviceAccount.automount=false"], lambda d: find(d, "ServiceAccount")["automountServiceAccountToken"] is False),
    (["serviceAccount.annotations.team=agents"], lambda d: find(d, "ServiceAccount")["metadata"].get("annotations") == {"team": "agents"}),
    (["serviceAccount.name=ctl-sa"], lambda d: pod(ctl(d))["serviceAccountName"] == "ctl-sa"
     and find(d, "ClusterRoleBinding")["subjects"][0]["name"] == "ctl-sa"),
    (["rbac.create=false"], lambda d: not has(d, "ClusterRole") and not has(d, "Role")),
    (["imagePullSecrets[0].name=regcred"], lambda d: pod(ctl(d)).get("imagePullSecrets") == [{"name": "regcred"}]),
    (["nameOverride=ctl"], lambda d: ctl(d)["metadata"]["labels"]["app.kubernetes.io/name"] == "ctl"),
    (["fullnameOverride=my-controller"], lambda d: ctl(d)["metadata"]["name"] == "my-controller"),
    (["podAnnotations.a=b"], lambda d: ctl(d)["spec"]["template"]["metadata"].get("annotations") == {"a": "b"}),
    (["podLabels.a=b"], lambda d: ctl(d)["spec"]["template"]["metadata"]["labels"].get("a") == "b"),
    (["podSecurityContext.runAsUser=1000"], lambda d: pod(ctl(d))["securityContext"].get("runAsUser") == 1000),
    (["securityContext.readOnlyRootFilesystem=false"], lambda d: ctl_c(d)["securityContext"]["readOnlyRootFilesystem"] is False),
    (["nodeSelector.disk=ssd"], lambda d: pod(ctl(d)).get("nodeSelector") == {"disk": "ssd"}),
    (["tolerations[0].key=dedicated", "tolerations[0].operator=Exists"],
     lambda d: pod(ctl(d)).get("tolerations") == [{"key": "dedicated", "operator": "Exists"}]),
    (["affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
      "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists"],
     lambda d: "nodeAffinity" in pod(ctl(d)).get("affinity", {})),
    # This project's settings.
    (["webhookEnabled=false"], lambda d: not has(d, "ValidatingWebhookConfiguration")
     and env_of(ctl_c(d))["ENABLE_WEBHOOKS"] == "false"),
    (["leaderElection.enabled=false"], lambda d: "--leader-elect" not in ctl_c(d)["args"]),
    (["workers.sandboxClaim=64"], lambda d: "--sandboxclaim-workers=64" in ctl_c(d)["args"]),
    (["logLevel=debug"], lambda d: env_of(ctl_c(d))["RUST_LOG"] == "debug"),
    (["injection.agentRuntime.image.repository=mirror.example/rt"],
     lambda d: "mirror.example/rt:v0.2.0" in find(d, "ConfigMap", "sandbox-injection-config")["data"]["agent-runtime"]),
]


@pytest.fixture(scope="module")
def controller_default():
    return render(CONTROLLER_CHART)


@pytest.mark.parametrize("sets,check", CONTROLLER_PARAMS, ids=[" ".join(s) for s, _ in CONTROLLER_PARAMS])
def test_controller_parameter(controller_default, sets, check):
    assert not holds(check, controller_default), "the default rendering already satisfies the check"
    args = [a for s in sets for a in ("--set", s)]
    assert check(render(CONTROLLER_CHART, *args))


def test_controller_defaults_are_the_guides(controller_default):
    values = yaml.safe_load((CONTROLLER_CHART / "values.yaml").read_text())
    assert values["replicaCount"] == 2
    assert values["image"]["tag"] == "v0.2.0" and values["image"]["pullPolicy"] == "IfNotPresent"
    assert (values["webhook"]["port"], values["metrics"]["port"], values["healthProbe"]["port"]) == (9443, 8443, 8081)
    assert values["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "2", "memory": "4Gi"}}
    assert values["namespace"]["name"] == "sandbox-system"
    assert values["podSecurityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert values["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "readOnlyRootFilesystem": True,
    }
    # Every CRD the chart ships, generated from the Rust types (crds_up_to_date.rs checks the
    # content), including 0.2.0's Checkpoint.
    crds = sorted(d["metadata"]["name"] for d in controller_default if d["kind"] == "CustomResourceDefinition")
    assert crds == sorted(
        f"{k}.agents.kruise.io"
        for k in ["sandboxes", "sandboxsets", "sandboxclaims", "sandboxtemplates", "checkpoints", "sandboxupdateops"]
    )


def test_default_injection_runs_our_agent_runtime(controller_default):
    import json

    data = find(controller_default, "ConfigMap", "sandbox-injection-config")["data"]
    t = json.loads(data["agent-runtime"])
    installer = t["csiSidecar"][0]
    assert installer["image"] == "kruise-agents-rs/agent-runtime:v0.2.0"
    assert installer["command"][1:] == ["install", "/mnt/agent-runtime"]
    assert t["mainContainer"]["lifecycle"]["postStart"]["exec"]["command"] == ["/mnt/agent-runtime/agent-runtime", "start"]
    # A user-given agent-runtime entry replaces the default; other runtimes are added.
    docs = render(
        CONTROLLER_CHART,
        "--set-json", 'injection.config={"agent-runtime": {"volume": []}, "csi": {"volume": []}}',
    )
    data = find(docs, "ConfigMap", "sandbox-injection-config")["data"]
    assert json.loads(data["agent-runtime"]) == {"volume": []}
    assert json.loads(data["csi"]) == {"volume": []}


# --- manager chart -----------------------------------------------------------------------------


def mgr(d):
    return find(d, "Deployment", "sandbox-manager")


def mgr_c(d):
    return container(mgr(d))


def gw(d):
    return find(d, "Deployment", "sandbox-gateway")


def gw_c(d):
    return container(gw(d))


def gw_config(d):
    return yaml.safe_load(find(d, "ConfigMap", "sandbox-xds")["data"]["gateway.yaml"])


def bootstrap(d):
    return yaml.safe_load(find(d, "ConfigMap", "sandbox-gateway")["data"]["envoy.yaml"])


def flag(args, name):
    """The value after `name` in Envoy's argument list."""
    return args[args.index(name) + 1]


def ingress_rules(d):
    return {r["host"]: r["http"]["paths"][0]["backend"]["service"] for r in find(d, "Ingress")["spec"]["rules"]}


def soft_anti_affinity(deploy):
    return pod(deploy)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]


MANAGER_PARAMS = [
    (["replicaCount=3"], lambda d: mgr(d)["spec"]["replicas"] == 3),
    (["controller.repository=mirror.example/mgr"], lambda d: mgr_c(d)["image"].startswith("mirror.example/mgr:")),
    (["controller.tag=v9.9.9"], lambda d: mgr_c(d)["image"].endswith(":v9.9.9")
     and container(find(d, "Deployment", "sandbox-xds"))["image"].endswith(":v9.9.9")),
    (["controller.pullPolicy=Always"], lambda d: mgr_c(d)["imagePullPolicy"] == "Always"),
    (["controller.logLevel=2"], lambda d: env_of(mgr_c(d))["RUST_LOG"] == "info,kube=warn"),
    (["controller.hostNetwork=true"], lambda d: pod(mgr(d))["hostNetwork"] is True
     and pod(mgr(d))["dnsPolicy"] == "ClusterFirstWithHostNet"),
    (["controller.maxClaimWorkers=7"], lambda d: "--max-claim-workers=7" in mgr_c(d)["args"]),
    (["controller.maxCreateQPS=9"], lambda d: "--max-create-qps=9" in mgr_c(d)["args"]),
    (["controller.resources.cpu=4"], lambda d: mgr_c(d)["resources"]["limits"]["cpu"] == "4"
     and mgr_c(d)["resources"]["requests"]["cpu"] == "4"),
    (["controller.resources.memory=8Gi"], lambda d: mgr_c(d)["resources"]["limits"]["memory"] == "8Gi"),
    (["gateway.replicaCount=3"], lambda d: gw(d)["spec"]["replicas"] == 3),
    (["gateway.image.repository=mirror.example/gw"], lambda d: gw_c(d)["image"].startswith("mirror.example/gw:")),
    (["gateway.image.tag=v9.9.9"], lambda d: gw_c(d)["image"].endswith(":v9.9.9")),
    (["gateway.image.pullPolicy=Always"], lambda d: gw_c(d)["imagePullPolicy"] == "Always"),
    (["gateway.resources.cpu=4"], lambda d: gw_c(d)["resources"]["requests"]["cpu"] == "4"),
    (["gateway.resources.memory=8Gi"], lambda d: gw_c(d)["resources"]["requests"]["memory"] == "8Gi"),
    (["gateway.livenessProbe.initialDelaySeconds=20"], lambda d: gw_c(d)["livenessProbe"]["initialDelaySeconds"] == 20),
    (["gateway.readinessProbe.periodSeconds=7"], lambda d: gw_c(d)["readinessProbe"]["periodSeconds"] == 7),
    (["gateway.envoy.admin.address=0.0.0.0"],
     lambda d: bootstrap(d)["admin"]["address"]["socket_address"]["address"] == "0.0.0.0"),
    (["gateway.envoy.admin.port=9911"],
     lambda d: bootstrap(d)["admin"]["address"]["socket_address"]["port_value"] == 9911 and gw_config(d)["admin_port"] == 9911),
    (["gateway.envoy.listener.address=::"], lambda d: gw_config(d)["listen_address"] == "::"),
    (["gateway.envoy.listener.port=10001"], lambda d: gw_config(d)["listen_port"] == 10001),
    (["gateway.envoy.logLevel=debug"], lambda d: flag(gw_c(d)["args"], "--log-level") == "debug"),
    (["gateway.envoy.concurrency=8"], lambda d: flag(gw_c(d)["args"], "--concurrency") == "8"),
    (["gateway.envoy.circuitBreakers.thresholds[0].maxConnections=100",
      "gateway.envoy.circuitBreakers.thresholds[0].maxPendingRequests=101",
      "gateway.envoy.circuitBreakers.thresholds[0].maxRequests=102",
      "gateway.envoy.circuitBreakers.thresholds[0].maxRetries=3"],
     lambda d: gw_config(d)["circuit_breakers"]
     == {"max_connections": 100, "max_pending_requests": 101, "max_requests": 102, "max_retries": 3}),
    (["gateway.envoy.circuitBreakers.enabled=false"],
     lambda d: gw_config(d)["circuit_breakers"]["max_connections"] == 4294967295),
    (["gateway.service.type=NodePort"], lambda d: find(d, "Service", "sandbox-gateway")["spec"]["type"] == "NodePort"),
    (["gateway.service.port=80"], lambda d: find(d, "Service", "sandbox-gateway")["spec"]["ports"][0]["port"] == 80
     and ingress_rules(d)["*.your.domain.com"]["port"]["number"] == 80),
    (["gateway.service.targetPort=10001"],
     lambda d: find(d, "Service", "sandbox-gateway")["spec"]["ports"][0]["targetPort"] == 10001),
    (["gateway.podAntiAffinity.type=hard"],
     lambda d: "requiredDuringSchedulingIgnoredDuringExecution" in pod(gw(d))["affinity"]["podAntiAffinity"]),
    (["gateway.podAntiAffinity.weight=50"], lambda d: soft_anti_affinity(gw(d))["weight"] == 50),
    (["gateway.podAntiAffinity.topologyKey=topology.kubernetes.io/zone"],
     lambda d: soft_anti_affinity(gw(d))["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"),
    (["gateway.initContainer.enabled=true"],
     lambda d: pod(gw(d))["initContainers"][0]["image"] == "busybox:1.36.1"),
    (["gateway.initContainer.enabled=true", "gateway.initContainer.image.repository=mirror.example/busybox",
      "gateway.initContainer.image.tag=1.37"],
     lambda d: pod(gw(d))["initContainers"][0]["image"] == "mirror.example/busybox:1.37"),
    (["e2b.domain=sandbox.example.com"], lambda d: "--domain=sandbox.example.com" in mgr_c(d)["args"]
     and set(ingress_rules(d)) == {"api.sandbox.example.com", "*.sandbox.example.com"}),
    (["e2b.enableAuth=false"], lambda d: "--enable-auth=false" in mgr_c(d)["args"]),
    (["e2b.maxTimeout=3600"], lambda d: "--max-timeout=3600" in mgr_c(d)["args"]),
    (["service.type=NodePort"], lambda d: find(d, "Service", "sandbox-manager")["spec"]["type"] == "NodePort"),
    (["service.port=80"], lambda d: find(d, "Service", "sandbox-manager")["spec"]["ports"][0]["port"] == 80
     and ingress_rules(d)["api.your.domain.com"]["port"]["number"] == 80),
    (["ingress.className=traefik"], lambda d: find(d, "Ingress")["spec"]["ingressClassName"] == "traefik"),
    (["ingress.annotations.cert-manager\\.io/cluster-issuer=letsencrypt-prod"],
     lambda d: find(d, "Ingress")["metadata"].get("annotations") == {"cert-manager.io/cluster-issuer": "letsencrypt-prod"}),
    (["ingress.certSecretName=other-tls"], lambda d: find(d, "Ingress")["spec"]["tls"][0]["secretName"] == "other-tls"),
    (["ingress.dataplaneService=edge"], lambda d: ingress_rules(d)["*.your.domain.com"]["name"] == "edge"),
    (["imagePullSecrets.regcred=true"], lambda d: pod(mgr(d)).get("imagePullSecrets") == [{"name": "regcred"}]
     and pod(gw(d)).get("imagePullSecrets") == [{"name": "regcred"}]),
    (["nameOverride=mgr"], lambda d: mgr(d)["metadata"]["labels"]["app.kubernetes.io/name"] == "mgr"),
    (["fullnameOverride=e2b-api"], lambda d: has(d, "Deployment", "e2b-api") and not has(d, "Deployment", "sandbox-manager")),
    (["serviceAccount.automount=false"],
     lambda d: find(d, "ServiceAccount", "sandbox-manager")["automountServiceAccountToken"] is False),
    (["serviceAccount.annotations.a=b"], lambda d: find(d, "ServiceAccount", "sandbox-manager")["metadata"].get("annotations") == {"a": "b"}),
    (["serviceAccount.name=mgr-sa"], lambda d: pod(mgr(d))["serviceAccountName"] == "mgr-sa"),
    (["podAnnotations.a=b"], lambda d: mgr(d)["spec"]["template"]["metadata"]["annotations"].get("a") == "b"),
    (["podLabels.a=b"], lambda d: gw(d)["spec"]["template"]["metadata"]["labels"].get("a") == "b"),
    (["podSecurityContext.fsGroup=3000"], lambda d: pod(mgr(d))["securityContext"]["fsGroup"] == 3000),
    (["securityContext.runAsUser=1000"], lambda d: gw_c(d)["securityContext"]["runAsUser"] == 1000),
    (["nodeSelector.disk=ssd"], lambda d: pod(gw(d)).get("nodeSelector") == {"disk": "ssd"}),
    (["tolerations[0].key=dedicated", "tolerations[0].operator=Exists"],
     lambda d: pod(mgr(d)).get("tolerations") == [{"key": "dedicated", "operator": "Exists"}]),
    (["affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
      "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists"],
     lambda d: "nodeAffinity" in pod(mgr(d))["affinity"] and "podAntiAffinity" not in pod(mgr(d))["affinity"]),
    # This project's settings.
    (["xds.image.tag=v1.2.3"], lambda d: container(find(d, "Deployment", "sandbox-xds"))["image"].endswith(":v1.2.3")),
    (["xds.gatewayConfig.stream_idle_timeout_secs=900"], lambda d: gw_config(d).get("stream_idle_timeout_secs") == 900),
    (["manager.minGateways=2"], lambda d: "--min-gateways=2" in mgr_c(d)["args"]),
    (["manager.watchNamespace=agents"], lambda d: "--namespace=agents" in mgr_c(d)["args"]
     and "--namespace=agents" in container(find(d, "Deployment", "sandbox-xds"))["args"]),
]


@pytest.fixture(scope="module")
def manager_default():
    return render(MANAGER_CHART, *REQUIRED)


@pytest.mark.parametrize("sets,check", MANAGER_PARAMS, ids=[" ".join(s) for s, _ in MANAGER_PARAMS])
def test_manager_parameter(manager_default, sets, check):
    assert not holds(check, manager_default), "the default rendering already satisfies the check"
    args = [a for s in sets for a in ("--set", s)]
    assert check(render(MANAGER_CHART, *REQUIRED, *args))


@pytest.mark.parametrize(
    "sets",
    [
        ["controller.extProcMaxConcurrency=5"],
        ["proxy.repository=mirror.example/envoy", "proxy.tag=v1.34", "proxy.pullPolicy=Always"],
    ],
)
def test_manager_accepts_unused_upstream_values(manager_default, sets):
    """Upstream's sidecar values still work on the command line and change nothing (documented
    as unused in values.yaml and README.md)."""
    args = [a for s in sets for a in ("--set", s)]
    assert render(MANAGER_CHART, *REQUIRED, *args) == manager_default


def test_manager_renders_the_three_components(manager_default):
    for name in ["sandbox-manager", "sandbox-xds", "sandbox-gateway"]:
        find(manager_default, "Deployment", name)
        find(manager_default, "Service", name)
    assert find(manager_default, "Service", "sandbox-gateway")["spec"]["ports"][0] == {
        "name": "http", "port": 7788, "targetPort": 10000}
    assert find(manager_default, "Service", "sandbox-manager")["spec"]["ports"][0]["port"] == 7788
    c = mgr_c(manager_default)
    assert "--backend=kube" in c["args"] and "--key-store=secret" in c["args"]
    assert "--xds-address=http://sandbox-xds.sandbox-system.svc:18000" in c["args"]
    assert env_of(c)["E2B_ADMIN_API_KEY"] == {"secretKeyRef": {"name": "sandbox-manager-admin-key", "key": "admin-api-key"}}
    import base64

    secret = find(manager_default, "Secret", "sandbox-manager-admin-key")
    assert base64.b64decode(secret["data"]["admin-api-key"]).decode() == ADMIN_KEY
    # The gateway bootstrap has only admin and the ADS cluster; the module arrives over ADS.
    b = bootstrap(manager_default)
    assert [c["name"] for c in b["static_resources"]["clusters"]] == ["sandbox_xds"]
    assert "listeners" not in b["static_resources"]
    assert b["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    # Manager pods spread over nodes by default (the guide: soft anti-affinity by hostname).
    assert soft_anti_affinity(mgr(manager_default))["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize(
    "args,named",
    [
        (["--set", "ingress.className=nginx"], "e2b.adminApiKey is required"),
        (["--set", f"e2b.adminApiKey={ADMIN_KEY}"], "ingress.className is required"),
        (["--set", "e2b.adminApiKey=secret", "--set", "ingress.className=nginx"], "e2b.adminApiKey must be e2b_"),
        ([*REQUIRED, "--set", "controller.infra=acs"], "controller.infra"),
        ([*REQUIRED, "--set", "gateway.podAntiAffinity.type=medium"], "gateway.podAntiAffinity.type"),
    ],
)
def test_manager_refuses_bad_values(args, named):
    assert named in render_error(MANAGER_CHART, *args)


# The installation guide's examples, as written (their placeholders filled in).
GUIDE_EXAMPLES = [
    (CONTROLLER_CHART, ["resources.limits.cpu=4", "resources.limits.memory=8Gi", "resources.requests.cpu=2",
                        "resources.requests.memory=4Gi"]),
    (CONTROLLER_CHART, ["image.repository=registry.example.com/agent-sandbox-controller"]),
    (MANAGER_CHART, ["controller.resources.cpu=4", "controller.resources.memory=8Gi", "gateway.resources.cpu=4",
                     "gateway.resources.memory=8Gi"]),
    (MANAGER_CHART, ["e2b.domain=sandbox.example.com", "e2b.enableAuth=true"]),
    (MANAGER_CHART, ["ingress.className=nginx", "ingress.annotations.cert-manager\\.io/cluster-issuer=letsencrypt-prod",
                     "ingress.certSecretName=sandbox-manager-tls"]),
    (MANAGER_CHART, ["gateway.replicaCount=3", "gateway.podAntiAffinity.type=hard", "gateway.resources.cpu=4",
                     "gateway.resources.memory=8Gi"]),
    (MANAGER_CHART, ["gateway.initContainer.enabled=true", "gateway.initContainer.image.repository=busybox",
                     "gateway.initContainer.image.tag=1.36.1"]),
    (MANAGER_CHART, ["controller.repository=registry.example.com/sandbox-manager",
                     "proxy.repository=registry.example.com/envoy", "proxy.tag=v1.33-latest",
                     "gateway.image.repository=registry.example.com/sandbox-gateway"]),
]


@pytest.mark.parametrize("chart,sets", GUIDE_EXAMPLES, ids=[" ".join(s)[:60] for _, s in GUIDE_EXAMPLES])
def test_guide_examples_render(chart, sets):
    args = [a for s in sets for a in ("--set", s)]
    if chart == MANAGER_CHART:
        args = [*REQUIRED, *args]
    docs = render(chart, *args)
    assert has(docs, "Deployment")


@pytest.mark.parametrize("chart", [CONTROLLER_CHART, MANAGER_CHART], ids=["controller", "manager"])
def test_helm_lint(chart):
    args = REQUIRED if chart == MANAGER_CHART else []
    helm("lint", "--strict", str(chart), *args)


@pytest.mark.parametrize(
    "sets",
    [[], ["gateway.envoy.admin.address=0.0.0.0", "gateway.envoy.admin.port=9911", "xds.grpcPort=18010"]],
    ids=["default", "customised"],
)
def test_rendered_gateway_config_is_valid(tmp_path, sets):
    """Envoy 1.40 validates the rendered bootstrap; sandbox-xds validates the rendered gateway
    settings (its --check-config refuses unknown or out-of-range fields)."""
    args = [a for s in sets for a in ("--set", s)]
    docs = render(MANAGER_CHART, *REQUIRED, *args)
    boot = tmp_path / "envoy.yaml"
    boot.write_text(find(docs, "ConfigMap", "sandbox-gateway")["data"]["envoy.yaml"])
    out = subprocess.run(
        [tool("ENVOY_BIN"), "--mode", "validate", "-c", str(boot), "--service-node", "gw-0"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0 and "OK" in out.stdout + out.stderr, out.stdout + out.stderr
    gw_yaml = tmp_path / "gateway.yaml"
    gw_yaml.write_text(find(docs, "ConfigMap", "sandbox-xds")["data"]["gateway.yaml"])
    out = subprocess.run(
        [tool("SANDBOX_XDS_BIN"), "--check-config", "--gateway-config", str(gw_yaml)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert out.returncode == 0, out.stderr
    assert "circuit_breakers" in out.stdout


@pytest.mark.parametrize("chart", [CONTROLLER_CHART, MANAGER_CHART], ids=["controller", "manager"])
def test_readme_values_table_is_current(chart):
    """Every value of values.yaml, with its default, is in the chart's README (make chart-docs)."""
    from conftest import ROOT

    out = subprocess.run(
        [os.sys.executable, str(ROOT / "scripts" / "chart-values-table.py"), str(chart), "--check"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    readme = (chart / "README.md").read_text()
    values = yaml.safe_load((chart / "values.yaml").read_text())

    def leaves(v, path=()):
        if isinstance(v, dict) and v:
            for k, sub in v.items():
                yield from leaves(sub, (*path, k))
        else:
            yield ".".join(path)

    missing = [k for k in leaves(values) if f"| `{k}` |" not in readme]
    assert not missing, f"values not in README.md: {missing}"
