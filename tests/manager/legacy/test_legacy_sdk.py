"""The older E2B SDK (2.37.1, run from .venv-legacy by `make test-manager-e2e`) through the same
stack: it speaks the v1 API (POST /sandboxes with "secure": true and timeout 300, POST
/sandboxes/{id}/connect with a timeout) and the same data plane. Which routes it used is read
from the manager's request counters (GET /metrics). The `stack` and `kill_after` fixtures come
from tests/manager/conftest.py (the rootdir's)."""

import importlib.metadata
import re
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from e2b import CommandExitException, Sandbox, SandboxNotFoundException, SandboxQuery, SandboxState

from helpers import assert_sandbox_gone_502, gateway_request, unique, wait_until

LEGACY_VERSION = "2.37.1"


def requests_counted(stack, method: str, route: str, code: int) -> int:
    """The manager's counter of `method route` answered with `code`."""
    text = urllib.request.urlopen(stack.api_url + "/metrics", timeout=10).read().decode()
    pattern = re.compile(
        r'^sandbox_manager_http_requests_total\{method="%s",route="%s",code="%d"\} (\d+)'
        % (re.escape(method), re.escape(route), code),
        re.M,
    )
    m = pattern.search(text)
    return int(m.group(1)) if m else 0


@pytest.fixture(scope="module", autouse=True)
def legacy_sdk():
    version = importlib.metadata.version("e2b")
    assert version == LEGACY_VERSION, (
        f"this suite is for e2b {LEGACY_VERSION} (found {version}): run it with .venv-legacy "
        "(make test-manager-e2e)"
    )


def test_create_uses_v1_and_works(stack, kill_after):
    v1 = requests_counted(stack, "POST", "/sandboxes", 201)
    v2 = requests_counted(stack, "POST", "/v2/sandboxes", 201)
    tag = unique("legacy")
    sbx = Sandbox.create(metadata={"tag": tag}, envs={"LEGACY": "yes"})
    kill_after.append(sbx)
    assert requests_counted(stack, "POST", "/sandboxes", 201) == v1 + 1, "the create did not use POST /sandboxes"
    assert requests_counted(stack, "POST", "/v2/sandboxes", 201) == v2
    assert sbx._envd_access_token, "the v1 create answer carries envdAccessToken"

    info = sbx.get_info()
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"tag": tag}
    assert info.envd_version == "0.6.13"
    assert info.template_id == "base"
    # 2.37.1 always sends timeout (default 300).
    assert abs((info.end_at - info.started_at) - timedelta(seconds=300)) <= timedelta(seconds=2), info
    assert [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()] == [sbx.sandbox_id]


def test_commands_and_files(stack, kill_after):
    sbx = Sandbox.create(envs={"LEGACY": "yes"})
    kill_after.append(sbx)
    r = sbx.commands.run("echo $LEGACY; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("yes\n", "err\n", 0)
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("exit 7")
    assert e.value.exit_code == 7
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    h = sbx.commands.run("sleep 120", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is True

    sbx.files.write("legacy/a.txt", "from the old SDK")
    assert sbx.files.read("legacy/a.txt") == "from the old SDK"
    assert sbx.files.exists("legacy/a.txt") is True
    assert [e.name for e in sbx.files.list("legacy")] == ["a.txt"]
    data = bytes(range(256)) * 4096
    sbx.files.write("legacy/b.bin", data)
    assert bytes(sbx.files.read("legacy/b.bin", format="bytes")) == data
    sbx.files.remove("legacy/a.txt")
    assert sbx.files.exists("legacy/a.txt") is False


def test_connect_v1(stack, kill_after):
    sbx = Sandbox.create(timeout=600)
    kill_after.append(sbx)
    end0 = sbx.get_info().end_at

    ran = requests_counted(stack, "POST", "/sandboxes/{id}/connect", 200)
    other = Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert requests_counted(stack, "POST", "/sandboxes/{id}/connect", 200) == ran + 1
    assert other.get_info().end_at == end0, "connect never shortens a running sandbox"
    assert other.commands.run("echo connected").stdout == "connected\n"

    sbx.files.write("kept.txt", "across the pause")
    assert sbx.pause() is True
    assert sbx.is_running() is False
    resumed_before = requests_counted(stack, "POST", "/sandboxes/{id}/connect", 201)
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert requests_counted(stack, "POST", "/sandboxes/{id}/connect", 201) == resumed_before + 1
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.files.read("kept.txt") == "across the pause"
    # 2.37.1 sends its default timeout (300) on connect: the resumed sandbox has it.
    end = resumed.get_info().end_at
    assert abs(end - (datetime.now(timezone.utc) + timedelta(seconds=300))) <= timedelta(seconds=5), end


def test_kill(stack, kill_after):
    sbx = Sandbox.create()
    kill_after.append(sbx)
    sid = sbx.sandbox_id
    assert sbx.is_running() is True
    assert sbx.kill() is True
    assert sbx.is_running() is False
    assert_sandbox_gone_502(gateway_request(stack, sid, "/health"), sid)
    assert Sandbox.kill(sid) is False
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sid)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sid)


def test_set_timeout_expires(stack, kill_after):
    sbx = Sandbox.create(timeout=300)
    kill_after.append(sbx)
    sbx.set_timeout(1)

    def gone():
        try:
            Sandbox.get_info(sbx.sandbox_id)
        except SandboxNotFoundException:
            return True
        return False

    wait_until(gone, timeout=30, what="the sandbox to expire")
    assert sbx.is_running() is False


def test_secure_false(stack, kill_after):
    """2.37.1 sends "secure": false when asked; the sandbox must still work (and, per the
    reference, still be secured: see tests/manager/test_secure.py::test_secure_false_is_ignored)."""
    sbx = Sandbox.create(secure=False)
    kill_after.append(sbx)
    assert sbx.commands.run("echo insecure-request").stdout == "insecure-request\n"
    sbx.files.write("s.txt", "ok")
    assert sbx.files.read("s.txt") == "ok"
