"""Fixtures of the agent-runtime suite.

The suite drives the real `e2b` Python SDK (2.63.0) against the real `agent-runtime` binary
(`$AGENT_RUNTIME_BIN`, built by `make build-runtime`):

* `E2B_DEBUG=true`: the SDK talks to envd at http://localhost:49983 with no control plane and
  treats envd as the newest version. The session starts one daemon there, with a scratch home
  directory, and stops it with SIGTERM at the end (the clean exit is asserted).
* `secure_sandbox`: a second daemon on a free port, reached through `E2B_SANDBOX_URL`-style
  routing, with a minimal control-plane stand-in that answers `POST /v2/sandboxes` the way the
  manager does: it calls the daemon's `POST /init` with the sandbox env vars and an access token
  and returns `envdVersion` 0.6.13 and `envdAccessToken`. That exercises the token, signed URLs
  and the SDK's feature gates at the version the platform reports.
"""

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ["E2B_DEBUG"] = "true"
os.environ.pop("E2B_SANDBOX_URL", None)
os.environ.pop("E2B_API_URL", None)

from e2b import AsyncSandbox, Sandbox  # noqa: E402

DEBUG_PORT = 49983
API_KEY = "e2b_" + "0" * 40


def runtime_bin() -> str:
    path = os.environ.get("AGENT_RUNTIME_BIN")
    if not path:
        pytest.exit("AGENT_RUNTIME_BIN is not set; run the suite with `make test-runtime-sdk`", returncode=2)
    if not os.access(path, os.X_OK):
        pytest.exit(f"AGENT_RUNTIME_BIN={path} is not an executable; run `make build-runtime`", returncode=2)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Daemon:
    """A running agent-runtime with a scratch home directory."""

    def __init__(self, listen: str, url: str, extra_args=(), name="runtime"):
        self.url = url
        self.dir = Path(tempfile.mkdtemp(prefix=f"agent-runtime-{name}-"))
        self.home = self.dir / "home"
        self.home.mkdir()
        self.home.chmod(0o755)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.log_path = self.dir / "daemon.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "AGENT_RUNTIME_LOG": "info",
        }
        args = [runtime_bin(), "--listen", listen, "--default-user", self.user,
                "--default-workdir", str(self.home), "--log-format", "json", *extra_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 204:
                        break
            except Exception:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"agent-runtime did not become healthy at {url}; log:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def runtime():
    """The daemon the debug-mode SDK reaches at http://localhost:49983."""
    if port_in_use(DEBUG_PORT):
        pytest.exit(f"port {DEBUG_PORT} on localhost is in use; the suite needs it for E2B_DEBUG mode", returncode=2)
    listen = f"127.0.0.1:{DEBUG_PORT}"
    if ipv6_loopback_available():
        listen += f",[::1]:{DEBUG_PORT}"
    d = Daemon(listen, f"http://127.0.0.1:{DEBUG_PORT}", name="debug")
    yield d
    code = d.stop()
    if code != 0:
        print(d.log())
    assert code == 0, f"agent-runtime exited with {code} on SIGTERM"
    d.cleanup()


@pytest.fixture
def sandbox(runtime):
    return Sandbox.create()


@pytest.fixture
async def async_sandbox(runtime):
    return await AsyncSandbox.create()


class ControlPlaneStandIn:
    """Answers the SDK's control-plane calls for one daemon, initialising it like the manager."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.token = secrets.token_hex(16)
        self.creates = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v2/sandboxes":
                    return self._json(404, {"code": 404, "message": f"no route {self.path}"})
                outer.creates.append(body)
                sandbox_id = "i" + secrets.token_hex(9)
                envs = dict(body.get("envVars") or {})
                envs.update({"E2B_SANDBOX_ID": sandbox_id, "E2B_TEMPLATE_ID": body.get("templateID", "base")})
                init = json.dumps({"envVars": envs, "accessToken": outer.token}).encode()
                req = urllib.request.Request(f"{outer.daemon.url}/init", data=init, method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    assert r.status == 204
                answer = {
                    "templateID": body.get("templateID", "base"),
                    "sandboxID": sandbox_id,
                    "clientID": "6532622b",
                    "envdVersion": "0.6.13",
                    "envdAccessToken": outer.token,
                    "trafficAccessToken": None,
                    "domain": None,
                }
                if (body.get("metadata") or {}).get("omit_token"):
                    del answer["envdAccessToken"]
                self._json(201, answer)

            def do_DELETE(self):
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def secure_runtime():
    port = free_port()
    d = Daemon(f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", name="secure")
    cp = ControlPlaneStandIn(d)
    yield d, cp
    cp.close()
    assert d.stop() == 0
    d.cleanup()


@pytest.fixture
def secure_sandbox(secure_runtime):
    d, cp = secure_runtime
    return Sandbox.create(
        envs={"FROM_CREATE": "create-value"},
        api_key=API_KEY,
        api_url=cp.url,
        sandbox_url=d.url,
        debug=False,
    )
