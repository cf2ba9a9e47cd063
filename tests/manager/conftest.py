"""Fixtures of the sandbox-manager end-to-end suite.

`stack` (session scope) starts the embedded stack exactly as `make run` does — through
`scripts/run-local.sh` — on free ports with a scratch run directory, waits for the printed E2B
environment, exports it (E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL, E2B_DOMAIN) for the SDK, and
at the end stops it with SIGTERM and asserts that no process of it is left.

`Stack` also starts further, independent stacks (`Stack.start(tmp_path)`) for tests that restart
components or need a private data directory.

With MANAGER_STACK=kube (`make test-manager-kube`) the session's stack is the Kubernetes one,
started through `scripts/run-kube.sh`: a real kube-apiserver + etcd, the node simulator running
each sandbox pod as an agent-runtime process, sandbox-controller, sandbox-xds, Envoy and two
sandbox-manager replicas (kube backend). Tests marked `local_only` need the embedded backend
(its data directory, snapshots, process-level pause, private stacks) and are deselected there.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIND = os.environ.get("MANAGER_STACK", "local")
SCRIPT = ROOT / "scripts" / ("run-kube.sh" if KIND == "kube" else "run-local.sh")
LOGS = {
    "local": ("run-local.out", "manager.log", "envoy.log"),
    "kube": ("run-local.out", "manager-0.log", "manager-1.log", "controller.log", "xds.log", "envoy.log", "cluster.log"),
}[KIND]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose arguments contain `text` (zombies excluded)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out.append(f"{pid}: {cmd}")
    return out


_STACKS = 0


@dataclass
class Stack:
    run_dir: Path
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    ports: dict = field(default_factory=dict)
    extra_env: dict = field(default_factory=dict)

    @classmethod
    def start(cls, run_dir: Path, pool_size: int = 2, **extra_env) -> "Stack":
        # No warm code-interpreter sandbox unless a test asks for one (kernels cost CPU and
        # memory; tests/code-interpreter sets its own pool).
        defaults = {"POOL_SIZE": str(pool_size), "CODE_INTERPRETER_POOL_SIZE": "0"}
        # Local stacks running at once get address ranges of their own (the session's keeps the
        # default 127.1.0.0/16), so no two managers hand out one loopback address.
        global _STACKS
        _STACKS += 1
        if KIND == "local" and _STACKS > 1:
            defaults["ADDRESS_RANGE"] = f"127.{10 + _STACKS % 200}.0.0/16"
        s = cls(run_dir=Path(run_dir), extra_env={**defaults, **extra_env})
        s.ports = {k: free_port() for k in ("API_PORT", "GATEWAY_PORT", "XDS_PORT", "XDS_HTTP_PORT", "ENVOY_ADMIN_PORT")}
        for i in range(1, int(s.extra_env.get("MANAGER_REPLICAS", "1"))):
            s.ports[f"API_PORT_{i}"] = free_port()
        s.launch()
        return s

    def launch(self, timeout: float = 240) -> None:
        """Starts run-local.sh (again, on the same ports and data) and waits for its env file."""
        env_file = self.run_dir / "env"
        if env_file.exists():
            env_file.unlink()
        self.env = {}
        env = {**os.environ, **{k: str(v) for k, v in self.ports.items()}, **self.extra_env,
               "RUN_DIR": str(self.run_dir), "GATEWAY_METRICS_PORT": "0", "GATEWAY_CONCURRENCY": "1"}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.run_dir / "run-local.out", "ab")
        self.proc = subprocess.Popen([str(SCRIPT)], env=env, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        deadline = time.time() + timeout
        wanted = {"E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN"}
        # The script writes the file with a redirection: it exists (empty or partial) a moment
        # before its content is complete.
        while not wanted <= self.env.keys():
            if self.proc.poll() is not None:
                raise RuntimeError(f"run-local.sh exited ({self.proc.returncode}):\n{self.tail()}")
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the stack was not ready within {timeout} s:\n{self.tail()}")
            time.sleep(0.1)
            if env_file.exists():
                self.env = dict(re.findall(r"export (\w+)=(\S+)\n", env_file.read_text()))

    def tail(self) -> str:
        parts = []
        for name in LOGS:
            p = self.run_dir / name
            if p.exists():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    @property
    def api_url(self) -> str:
        return self.env["E2B_API_URL"]

    def replica_url(self, i: int) -> str:
        """The API of manager replica `i` (kube stacks run MANAGER_REPLICAS on consecutive ports)."""
        return f"http://127.0.0.1:{self.ports.get(f'API_PORT_{i}', self.ports['API_PORT'] + i)}"

    @property
    def api_key(self) -> str:
        return self.env["E2B_API_KEY"]

    @property
    def gateway_url(self) -> str:
        return self.env["E2B_SANDBOX_URL"]

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    def sdk_opts(self) -> dict:
        """Keyword arguments that point an SDK call at this stack (for stacks other than the
        session's, whose values are also exported to the environment)."""
        return {"api_key": self.api_key, "api_url": self.api_url, "sandbox_url": self.gateway_url, "domain": "localhost"}

    def request(self, method: str, path: str, body=None, key: str | None = "admin", headers=None, raw: bytes | None = None, timeout: float = 60, base: str | None = None):
        """An API call (to `base`, default this stack's API); returns (status, parsed JSON or
        text, headers)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"content-type": "application/json", **(headers or {})}
        if key == "admin":
            h["x-api-key"] = self.api_key
        elif key is not None:
            h["x-api-key"] = key
        req = urllib.request.Request((base or self.api_url) + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text, rh = r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as e:
            status, text, rh = e.code, e.read().decode(), e.headers
        try:
            return status, json.loads(text) if text else None, rh
        except json.JSONDecodeError:
            return status, text, rh

    def stop(self, expect_clean: bool = True) -> None:
        """SIGTERM to run-local.sh (which stops the manager and Envoy); asserts nothing is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"the stack did not stop within 60 s:\n{self.tail()}")
        self.proc = None
        self.log.close()
        if expect_clean:
            deadline = time.time() + 30
            left = processes_mentioning(str(self.run_dir))
            while left and time.time() < deadline:
                time.sleep(0.2)
                left = processes_mentioning(str(self.run_dir))
            assert not left, f"processes left behind after stopping the stack: {left}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    for var in ("SANDBOX_MANAGER_BIN", "AGENT_RUNTIME_BIN", "SANDBOX_GATEWAY_MODULE", "ENVOY_BIN"):
        if not os.environ.get(var):
            pytest.exit(f"{var} is not set; run the suite with `make test-manager`", returncode=2)
    extra = {"MANAGER_REPLICAS": "2"} if KIND == "kube" else {}
    if KIND == "kube":
        for var in ("SANDBOX_CONTROLLER_BIN", "SANDBOX_XDS_BIN", "KUBE_CLUSTER_BIN", "KUBECTL_BIN"):
            if not os.environ.get(var):
                pytest.exit(f"{var} is not set; run the suite with `make test-manager-kube`", returncode=2)
    s = Stack.start(tmp_path_factory.mktemp("stack"), pool_size=4, **extra)
    saved = {k: os.environ.get(k) for k in s.env}
    os.environ.update(s.env)
    os.environ.pop("E2B_DEBUG", None)
    yield s
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s.stop()


def pytest_configure(config):
    config.addinivalue_line("markers", "local_only: needs the embedded (local) backend; deselected with MANAGER_STACK=kube")


@pytest.fixture
def kill_after(stack):
    """A list to append sandbox ids (or SDK sandboxes) to; each is killed (admin key, raw DELETE)
    when the test ends, whatever its outcome, so no test leaves sandboxes for the next."""
    ids: list = []
    yield ids
    for s in ids:
        sid = getattr(s, "sandbox_id", s)
        try:
            stack.request("DELETE", f"/sandboxes/{sid}", timeout=30)
        except OSError:
            pass


@pytest.fixture
def team_pool(stack):
    """Gives team `name` the template `base` it creates from. On the local stack templates are
    global, so nothing is needed; on the Kubernetes stack a team's templates are the SandboxSets
    in the namespace named after it, so this creates that namespace with a SandboxSet `base` of
    one warm sandbox, waits until it is warm, and deletes the namespace (and so every sandbox of
    the team) after the test."""
    made: list[str] = []

    def make(name: str) -> None:
        if KIND != "kube":
            return
        kubectl = os.environ["KUBECTL_BIN"]
        subprocess.run([kubectl, "create", "namespace", name], check=True, capture_output=True, timeout=60)
        made.append(name)
        manifest = (f"apiVersion: agents.kruise.io/v1alpha1\nkind: SandboxSet\nmetadata: {{name: base, namespace: {name}}}\n"
                    "spec:\n  replicas: 1\n  template:\n    spec:\n      containers: [{name: main, image: agent-runtime}]\n")
        subprocess.run([kubectl, "apply", "-f", "-"], input=manifest, text=True, check=True, capture_output=True, timeout=60)

        def warm() -> bool:
            out = subprocess.run([kubectl, "get", "sandboxset", "base", "-n", name, "-o",
                                  "jsonpath={.status.availableReplicas}"], capture_output=True, text=True, timeout=60)
            return out.stdout.strip() not in ("", "0")

        deadline = time.monotonic() + 120
        while not warm():
            assert time.monotonic() < deadline, f"SandboxSet {name}/base did not warm within 2 minutes"
            time.sleep(0.2)

    yield make
    # Gone before the next test: a namespace still terminating holds a second `base` template.
    for name in made:
        subprocess.run([os.environ["KUBECTL_BIN"], "delete", "namespace", name, "--wait=true", "--timeout=120s"],
                       capture_output=True, timeout=150)
