"""The charts installed on the real test apiserver, their pods really running: the node
simulator plays the kubelet and runs each of this project's images as the matching project
binary, with the arguments, environment, ConfigMaps, Secrets, service account (RBAC) and
readiness probe the charts give it (tests/kube-harness/src/nodesim/container.rs). Then the
real E2B SDK creates sandboxes through the installed manager and runs commands through the
installed gateway; `helm upgrade` rolls the pods without touching a Sandbox; `helm uninstall`
removes the charts' objects but not the CRDs, the namespace or the sandboxes, as the
installation guide says.

One thing the harness cannot do: the apiserver never calls the admission webhooks of a
simulated pod (pod addresses are loopback addresses, which EndpointSlices refuse), so the
default install checks the controller serves them and fills their CA bundle, and the rest of
the test runs with `webhookEnabled=false`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ADMIN_KEY, CONTROLLER_CHART, MANAGER_CHART, tool

NS = "sandbox-system"
IP_RANGE = "127.7.0.0/16"
CONTROLLERS = "deployment-controller,replicaset-controller,endpoints-controller,endpointslice-controller"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, work: Path):
        self.work = work
        env_file = work / "cluster.env"
        gateway_module_dir = str(Path(tool("SANDBOX_GATEWAY_MODULE")).parent)
        runtime = tool("AGENT_RUNTIME_BIN")
        images = {
            "kruise-agents-rs/sandbox-controller": tool("SANDBOX_CONTROLLER_BIN"),
            "kruise-agents-rs/sandbox-manager": tool("SANDBOX_MANAGER_BIN"),
            "kruise-agents-rs/sandbox-xds": tool("SANDBOX_XDS_BIN"),
            "kruise-agents-rs/sandbox-gateway":
                f"env ENVOY_DYNAMIC_MODULES_SEARCH_PATH={gateway_module_dir} {tool('ENVOY_BIN')}",
        }
        args = [
            tool("KUBE_CLUSTER_BIN"), "--node-sim", "--ip-range", IP_RANGE, "--controllers", CONTROLLERS,
            # Sandbox pods: the agent-runtime, its work directory standing in for the home.
            "--command", f"env HOME={{workdir}} {runtime} --listen {{ip}}:{{port}} --default-workdir {{workdir}}",
            "--env-file", str(env_file),
        ]
        for repo, program in images.items():
            args += ["--image", f"{repo}={program}"]
        self.log = open(work / "cluster.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"kube-cluster exited: {(work / 'cluster.log').read_text()[-3000:]}")
            if env_file.exists() and "NODE_SIM_NODE" in env_file.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the cluster did not start within 3 minutes")
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        self.env = {**os.environ, "KUBECONFIG": env["KUBECONFIG"]}

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def run(self, tool_env: str, *args: str, check: bool = True, timeout: int = 300) -> str:
        out = subprocess.run([tool(tool_env), *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{Path(tool(tool_env)).name} {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.run("KUBECTL_BIN", *args, check=check)

    def helm(self, *args: str) -> str:
        try:
            return self.run("HELM_BIN", *args)
        except AssertionError as e:
            raise AssertionError(f"{e}\nthe simulated pods' output:\n{self.sim_logs()}") from None

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def wait_for(self, what: str, check, timeout: float = 120):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})")

    def pod_ips(self, component: str) -> list[str]:
        pods = self.get("pods", "-n", NS, "-l", f"app.kubernetes.io/component={component}")["items"]
        return [
            p["status"]["podIP"] for p in pods
            if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]

    def sim_logs(self) -> str:
        """Each simulated pod's output (for failure messages)."""
        out = []
        for log in sorted(Path("/tmp/kube-harness").glob("node-*/*/process.log")):
            if log.stat().st_mtime >= self.started:
                out.append(f"--- {log.parent.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("install"))
    c.started = time.time()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def gateway_ports():
    return {"listener": free_port(), "admin": free_port()}


def manager_values(ports: dict, *extra: str) -> list[str]:
    """The manager chart's values for this machine: the two required ones, and ports of their
    own for the one gateway (its listener binds the wildcard address of the whole machine here,
    not of a pod network namespace)."""
    sets = [
        f"e2b.adminApiKey={ADMIN_KEY}",
        "ingress.className=nginx",
        "gateway.replicaCount=1",
        f"gateway.envoy.listener.port={ports['listener']}",
        f"gateway.service.targetPort={ports['listener']}",
        f"gateway.envoy.admin.port={ports['admin']}",
        "xds.gatewayConfig.metrics_port=0",
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


def sdk(cluster: Cluster, ports: dict, monkeypatch, replica: int = 0):
    """The E2B SDK pointed at one manager pod and the gateway pod."""
    managers = cluster.wait_for("ready manager pods", lambda: cluster.pod_ips("manager"))
    gateway = cluster.wait_for("a ready gateway pod", lambda: cluster.pod_ips("gateway"))
    monkeypatch.setenv("E2B_API_KEY", ADMIN_KEY)
    monkeypatch.setenv("E2B_API_URL", f"http://{managers[replica % len(managers)]}:8080")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"http://{gateway[0]}:{ports['listener']}")
    monkeypatch.setenv("E2B_DOMAIN", "your.domain.com")
    from e2b import Sandbox

    return Sandbox


def test_controller_installs_with_the_guides_defaults(cluster):
    cluster.kubectl("create", "namespace", NS)
    cluster.helm("install", "agents-sandbox-controller", str(CONTROLLER_CHART), "-n", NS, "--wait", "--timeout", "180s")
    deploy = cluster.get("deployment", "sandbox-controller", "-n", NS)
    assert deploy["status"].get("readyReplicas") == 2, cluster.sim_logs()
    crds = [c["metadata"]["name"] for c in cluster.get("crd")["items"]]
    assert sum(c.endswith(".agents.kruise.io") for c in crds) == 6
    # One replica leads; the leader serves the webhooks and fills their CA bundle.
    lease = cluster.wait_for(
        "a leader", lambda: cluster.get("lease", "f57b9a68.kruise.io", "-n", NS)["spec"].get("holderIdentity"))
    assert lease.startswith("sandbox-controller-")
    cluster.wait_for("the webhooks' CA bundle", lambda: all(
        w["clientConfig"].get("caBundle")
        for w in cluster.get("validatingwebhookconfiguration", "sandbox-controller-validating-webhook-configuration")["webhooks"]
    ))


def test_controller_upgrade_with_reset_values(cluster):
    """The guide's upgrade: the chart's CRDs applied first (Helm never updates crds/), then
    `helm upgrade --reset-values` with new values (here: one replica, no webhooks, which this
    harness cannot call); the controller then runs the warm pool."""
    cluster.kubectl("apply", "-f", str(CONTROLLER_CHART / "crds"))
    cluster.helm("upgrade", "agents-sandbox-controller", str(CONTROLLER_CHART), "-n", NS, "--reset-values",
                 "--set", "replicaCount=1", "--set", "webhookEnabled=false", "--wait", "--timeout", "180s")
    assert cluster.get("deployment", "sandbox-controller", "-n", NS)["spec"]["replicas"] == 1
    assert "sandbox-controller-validating-webhook-configuration" not in cluster.kubectl(
        "get", "validatingwebhookconfiguration", "-o", "name")
    manifest = """
apiVersion: agents.kruise.io/v1alpha1
kind: SandboxSet
metadata: {name: base, namespace: default}
spec:
  replicas: 3
  template:
    spec:
      containers:
        - name: main
          image: agent-runtime
"""
    subprocess.run([tool("KUBECTL_BIN"), "apply", "-f", "-"], input=manifest, text=True, env=cluster.env,
                   check=True, capture_output=True)
    cluster.wait_for("3 warm sandboxes", lambda: cluster.get("sandboxset", "base", "-n", "default")
                     .get("status", {}).get("availableReplicas", 0) >= 3, timeout=180)


def test_manager_chart_serves_the_e2b_sdk(cluster, gateway_ports, monkeypatch):
    cluster.helm("install", "agents-sandbox-manager", str(MANAGER_CHART), "-n", NS,
                 *manager_values(gateway_ports), "--wait", "--timeout", "180s")
    for name in ["sandbox-manager", "sandbox-xds", "sandbox-gateway"]:
        d = cluster.get("deployment", name, "-n", NS)
        assert d["status"].get("readyReplicas") == d["spec"]["replicas"], f"{name}\n{cluster.sim_logs()}"
    Sandbox = sdk(cluster, gateway_ports, monkeypatch)
    # Through each manager replica in turn: claim, run a command, write and read a file, kill.
    for replica in range(2):
        Sandbox = sdk(cluster, gateway_ports, monkeypatch, replica)
        sbx = Sandbox.create("base", timeout=120)
        try:
            r = sbx.commands.run("echo hello through the gateway")
            assert r.exit_code == 0 and r.stdout == "hello through the gateway\n"
            sbx.files.write("note.txt", f"replica {replica}")
            assert sbx.files.read("note.txt") == f"replica {replica}"
            [sandbox] = cluster.get("sandboxes", "-n", "default", "-l",
                                    f"agents.kruise.io/sandbox-id={sbx.sandbox_id}")["items"]
            assert sandbox["metadata"]["labels"]["agents.kruise.io/sandbox-claimed"] == "true"
        finally:
            sbx.kill()
        cluster.wait_for("the killed sandbox gone", lambda: not cluster.get(
            "sandboxes", "-n", "default", "-l", f"agents.kruise.io/sandbox-id={sbx.sandbox_id}")["items"])


def test_upgrade_rolls_pods_and_keeps_sandboxes(cluster, gateway_ports, monkeypatch):
    Sandbox = sdk(cluster, gateway_ports, monkeypatch)
    kept = Sandbox.create("base", timeout=600)
    kept.files.write("kept.txt", "still here")
    old_pods = {p["metadata"]["name"] for p in cluster.get("pods", "-n", NS)["items"]}
    cluster.helm("upgrade", "agents-sandbox-manager", str(MANAGER_CHART), "-n", NS, "--reset-values",
                 *manager_values(gateway_ports, "replicaCount=1", "controller.maxClaimWorkers=50",
                                 "gateway.envoy.concurrency=1"),
                 "--wait", "--timeout", "180s")
    manager = cluster.get("deployment", "sandbox-manager", "-n", NS)
    assert manager["spec"]["replicas"] == 1
    assert "--max-claim-workers=50" in manager["spec"]["template"]["spec"]["containers"][0]["args"]
    cluster.wait_for("the old manager and gateway pods gone", lambda: not any(
        p["metadata"]["name"] in old_pods
        for p in cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/component in (manager,gateway)")["items"]))
    # The sandbox outlived the rollout: still claimed, its files there, reachable through the
    # new gateway pod, and the new manager knows it.
    Sandbox = sdk(cluster, gateway_ports, monkeypatch)
    again = Sandbox.connect(kept.sandbox_id)
    assert again.files.read("kept.txt") == "still here"
    assert again.commands.run("true").exit_code == 0
    assert kept.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]


def test_uninstall_keeps_crds_namespace_and_sandboxes(cluster):
    before = {s["metadata"]["name"] for s in cluster.get("sandboxes", "-n", "default")["items"]}
    assert before
    cluster.helm("uninstall", "agents-sandbox-manager", "-n", NS, "--wait", "--timeout", "120s")
    cluster.helm("uninstall", "agents-sandbox-controller", "-n", NS, "--wait", "--timeout", "120s")
    assert cluster.get("deployments", "-n", NS)["items"] == []
    assert [s["metadata"]["name"] for s in cluster.get("services", "-n", NS)["items"]] == []
    roles = [r["metadata"]["name"] for r in cluster.get("clusterroles")["items"]]
    assert not [r for r in roles if "sandbox" in r], roles
    assert cluster.get("namespace", NS)["status"]["phase"] == "Active"
    crds = [c["metadata"]["name"] for c in cluster.get("crd")["items"]]
    assert sum(c.endswith(".agents.kruise.io") for c in crds) == 6
    after = {s["metadata"]["name"] for s in cluster.get("sandboxes", "-n", "default")["items"]}
    assert before <= after
    pods = cluster.get("pods", "-n", "default")["items"]
    assert all(p["status"]["phase"] == "Running" for p in pods) and pods
