"""The MCP endpoint `/mcp` of the manager, driven by the real MCP Python SDK (mcp 2.3.0, its
streamable-HTTP client): tools are listed with schemas; a sandbox is created, used (commands,
files, listings) and killed through tools that act as the API key's team; no key or a wrong key
is refused with 401 (as the REST API), `Authorization: Bearer` is accepted; another team's key
cannot touch the admin's sandbox ("not found"); failures are tool errors (`isError`) that say
what went wrong."""

import json
import urllib.request
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import Stack

TOOLS = {"create_sandbox", "kill_sandbox", "run_command", "read_file", "write_file", "list_files"}


@asynccontextmanager
async def mcp_client(stack, headers: dict, statuses: list | None = None, mode: str = "auto"):
    """An MCP client of the stack's /mcp with these HTTP headers; `statuses` collects the HTTP
    status of every response. `mode="legacy"` uses the initialize handshake of the protocol
    versions before 2026-07-28 instead of `server/discover`."""

    async def record(response):
        if statuses is not None:
            statuses.append(response.status_code)

    async with httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(30, read=300),
        event_hooks={"response": [record]},
    ) as http:
        async with Client(streamable_http_client(f"{stack.api_url}/mcp", http_client=http), mode=mode) as client:
            yield client


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def call_ok(client, name: str, args: dict) -> dict:
    r = await client.call_tool(name, args)
    assert not r.is_error, f"{name} failed: {text_of(r)}"
    assert isinstance(r.structured_content, dict), r
    return r.structured_content


async def call_err(client, name: str, args: dict) -> str:
    r = await client.call_tool(name, args)
    assert r.is_error, f"{name} should have failed: {r}"
    return text_of(r)


def create_key(stack, team: str) -> str:
    status, created, _ = stack.request("POST", "/api-keys", {"name": "x", "teamName": team})
    assert status == 201, created
    return created["key"]


def admin_client(stack):
    """The admin's client. (Opened in the test itself, not in a fixture: anyio's cancel scopes
    must be left in the task that entered them.)"""
    return mcp_client(stack, {"X-API-Key": stack.api_key})


async def test_tools_are_listed_with_schemas(stack):
    async with admin_client(stack) as admin:
        tools = {t.name: t for t in (await admin.list_tools()).tools}
        assert set(tools) == TOOLS
        for name, t in tools.items():
            assert t.description, name
            assert t.input_schema["type"] == "object", name
            if name != "create_sandbox":
                assert "sandbox_id" in t.input_schema.get("required", []), name
        assert {"command", "cwd", "envs", "timeout"} <= set(tools["run_command"].input_schema["properties"])
        assert {"template", "timeout", "metadata", "envs"} <= set(tools["create_sandbox"].input_schema["properties"])


async def test_a_sandbox_through_mcp(stack):
    async with admin_client(stack) as admin:
        created = await call_ok(admin, "create_sandbox", {"metadata": {"via": "mcp"}, "envs": {"GREETING": "hello"}})
        sid = created["sandbox_id"]
        assert created["template_id"] == "base"
        try:
            # The sandbox is an ordinary one: the REST API sees it, with its metadata.
            status, detail, _ = stack.request("GET", f"/sandboxes/{sid}")
            assert status == 200, detail
            assert detail["metadata"].get("via") == "mcp"

            out = await call_ok(admin, "run_command", {"sandbox_id": sid, "command": 'echo "$GREETING $X"; echo err >&2', "envs": {"X": "world"}})
            assert out["exit_code"] == 0
            assert out["stdout"] == "hello world\n"
            assert out["stderr"] == "err\n"
            assert out["stdout_truncated"] is False

            out = await call_ok(admin, "run_command", {"sandbox_id": sid, "command": "exit 3"})
            assert out["exit_code"] == 3
            assert out["status"] == "exit status 3"

            out = await call_ok(admin, "run_command", {"sandbox_id": sid, "command": "pwd", "cwd": "/tmp"})
            assert out["stdout"] == "/tmp\n"

            # A bad cwd is the runtime's own error, as a tool error.
            msg = await call_err(admin, "run_command", {"sandbox_id": sid, "command": "true", "cwd": "/does/not/exist"})
            assert "does not exist" in msg

            # Long output is cut so the result fits an MCP message (clients limit one to 1 MiB),
            # and says so; a short stderr next to it stays whole.
            out = await call_ok(admin, "run_command", {"sandbox_id": sid, "command": "head -c 1500000 /dev/zero | tr '\\0' a; echo done >&2"})
            assert out["exit_code"] == 0
            assert out["stdout_truncated"] is True and out["stderr_truncated"] is False
            assert 300_000 < len(out["stdout"]) < 1 << 20
            assert set(out["stdout"]) == {"a"}
            assert out["stdout_bytes"] == 1_500_000
            assert out["stderr"] == "done\n"

            # A command past its timeout is killed: a tool error with what it wrote.
            r = await admin.call_tool("run_command", {"sandbox_id": sid, "command": "echo started; sleep 30", "timeout": 1})
            assert r.is_error
            assert "timeout of 1 s" in text_of(r)
            assert r.structured_content["stdout"] == "started\n"

            # Files: write (parents created), read back, list.
            text = "line one\nünïcødé ✓\n"
            w = await call_ok(admin, "write_file", {"sandbox_id": sid, "path": "mcp-dir/sub/notes.txt", "content": text})
            assert w["path"].endswith("/mcp-dir/sub/notes.txt") and w["path"].startswith("/")
            assert w["bytes"] == len(text.encode())
            r = await call_ok(admin, "read_file", {"sandbox_id": sid, "path": "mcp-dir/sub/notes.txt"})
            assert r["content"] == text
            assert r["truncated"] is False and r["lossy"] is False
            out = await call_ok(admin, "run_command", {"sandbox_id": sid, "command": "cat ~/mcp-dir/sub/notes.txt"})
            assert out["stdout"] == text

            listing = await call_ok(admin, "list_files", {"sandbox_id": sid, "path": "mcp-dir"})
            assert [(e["name"], e["type"]) for e in listing["entries"]] == [("sub", "dir")]
            listing = await call_ok(admin, "list_files", {"sandbox_id": sid, "path": "mcp-dir", "depth": 2})
            by_name = {e["name"]: e for e in listing["entries"]}
            assert by_name["notes.txt"]["type"] == "file"
            assert by_name["notes.txt"]["size"] == len(text.encode())
            assert by_name["notes.txt"]["path"] == w["path"]

            assert "does not exist" in await call_err(admin, "read_file", {"sandbox_id": sid, "path": "nope.txt"})
            assert await call_err(admin, "list_files", {"sandbox_id": sid, "path": "nope"})

            # Large files are cut too.
            await call_ok(admin, "run_command", {"sandbox_id": sid, "command": "head -c 2000000 /dev/zero | tr '\\0' b > big.txt"})
            r = await call_ok(admin, "read_file", {"sandbox_id": sid, "path": "big.txt"})
            assert r["truncated"] is True
            assert 300_000 < len(r["content"]) < 1 << 20
            assert set(r["content"]) == {"b"}
            assert r["size"] == 2_000_000
        finally:
            killed = await call_ok(admin, "kill_sandbox", {"sandbox_id": sid})
        assert killed == {"sandbox_id": sid, "killed": True}
        status, _, _ = stack.request("GET", f"/sandboxes/{sid}")
        assert status == 404
        msg = await call_err(admin, "run_command", {"sandbox_id": sid, "command": "true"})
        assert "not found" in msg
        assert "not found" in await call_err(admin, "kill_sandbox", {"sandbox_id": sid})


async def test_bad_arguments(stack):
    async with admin_client(stack) as admin:
        assert "not found" in await call_err(admin, "run_command", {"sandbox_id": "NOT-AN-ID", "command": "true"})
        assert "template" in (await call_err(admin, "create_sandbox", {"template": "no-such-template"})).lower()
        assert "timeout" in await call_err(admin, "create_sandbox", {"timeout": 0})
        # A missing required argument is a tool error that names it.
        assert "sandbox_id" in await call_err(admin, "run_command", {"command": "true"})
        assert "depth" in await call_err(admin, "list_files", {"sandbox_id": "x", "depth": 0})
        assert "timeout" in await call_err(admin, "run_command", {"sandbox_id": "x", "command": "true", "timeout": 0})


def raw_post(stack, headers: dict) -> tuple[int, dict | str]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    req = urllib.request.Request(
        f"{stack.api_url}/mcp",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "e2b_" + "0" * 40},
        {"X-API-Key": "garbage"},
        {"Authorization": "Bearer e2b_" + "0" * 40},
        {"Authorization": "Basic eDp5"},
    ],
    ids=["no-key", "wrong-key", "malformed-key", "wrong-bearer", "basic"],
)
async def test_refused_without_a_valid_key(stack, headers):
    status, body = raw_post(stack, headers)
    assert status == 401, body
    assert body == {"code": 401, "message": "Invalid API key"}
    # The real client is refused too: the handshake fails on the 401.
    statuses = []
    with pytest.raises(Exception):
        async with mcp_client(stack, headers, statuses) as client:
            await client.list_tools()
    assert statuses and set(statuses) == {401}, statuses


async def test_bearer_keys_are_accepted(stack):
    status, body = raw_post(stack, {"Authorization": f"Bearer {stack.api_key}"})
    assert status == 200, body
    async with mcp_client(stack, {"Authorization": f"Bearer {stack.api_key}"}) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS


async def test_another_team_cannot_use_the_admins_sandbox(stack, team_pool):
    team_pool("team-mcp")
    async with admin_client(stack) as admin:
        other_key = create_key(stack, "team-mcp")
        sid = (await call_ok(admin, "create_sandbox", {"timeout": 120}))["sandbox_id"]
        try:
            async with mcp_client(stack, {"X-API-Key": other_key}) as other:
                for name, args in [
                    ("run_command", {"command": "echo pwned > ~/pwned"}),
                    ("read_file", {"path": "/etc/hostname"}),
                    ("write_file", {"path": "x.txt", "content": "x"}),
                    ("list_files", {}),
                    ("kill_sandbox", {}),
                ]:
                    msg = await call_err(other, name, {"sandbox_id": sid, **args})
                    assert msg == f"sandbox {sid} not found", (name, msg)
                # The other team's own sandboxes work, and the admin sees them (by design).
                own = (await call_ok(other, "create_sandbox", {"timeout": 120}))["sandbox_id"]
                out = await call_ok(other, "run_command", {"sandbox_id": own, "command": "echo mine"})
                assert out["stdout"] == "mine\n"
                status, detail, _ = stack.request("GET", f"/sandboxes/{own}", key=other_key)
                assert status == 200, detail
                await call_ok(other, "kill_sandbox", {"sandbox_id": own})
            # Nothing happened to the admin's sandbox.
            out = await call_ok(admin, "run_command", {"sandbox_id": sid, "command": "test ! -e ~/pwned && echo clean"})
            assert out["stdout"] == "clean\n"
        finally:
            await call_ok(admin, "kill_sandbox", {"sandbox_id": sid})


async def test_a_paused_sandbox_is_refused_until_resumed(stack):
    async with admin_client(stack) as admin:
        sid = (await call_ok(admin, "create_sandbox", {"timeout": 120}))["sandbox_id"]
        try:
            status, body, _ = stack.request("POST", f"/sandboxes/{sid}/pause", {})
            assert status == 204, body
            msg = await call_err(admin, "run_command", {"sandbox_id": sid, "command": "true"})
            assert "paused" in msg
            status, body, _ = stack.request("POST", f"/sandboxes/{sid}/connect", {"timeout": 120})
            assert status == 201, body
            out = await call_ok(admin, "run_command", {"sandbox_id": sid, "command": "echo back"})
            assert out["stdout"] == "back\n"
        finally:
            await call_ok(admin, "kill_sandbox", {"sandbox_id": sid})


@pytest.mark.local_only  # starts a private local stack
async def test_without_auth_every_caller_is_the_admin(tmp_path):
    s = Stack.start(tmp_path / "no-auth", pool_size=1, E2B_ENABLE_AUTH="false")
    try:
        status, body = raw_post(s, {})
        assert status == 200, body
        async with mcp_client(s, {}) as client:
            sid = (await call_ok(client, "create_sandbox", {"timeout": 60}))["sandbox_id"]
            status, detail, _ = s.request("GET", f"/sandboxes/{sid}")
            assert status == 200 and detail["sandboxID"] == sid, detail
            out = await call_ok(client, "run_command", {"sandbox_id": sid, "command": "echo ok"})
            assert out["stdout"] == "ok\n"
            await call_ok(client, "kill_sandbox", {"sandbox_id": sid})
    finally:
        s.stop()


@pytest.mark.local_only  # starts a private local stack
def test_the_endpoint_can_be_turned_off(tmp_path):
    s = Stack.start(tmp_path / "no-mcp", pool_size=0, SANDBOX_MANAGER_MCP="false")
    try:
        status, body = raw_post(s, {"X-API-Key": s.api_key})
        assert status == 404, body
    finally:
        s.stop()


async def test_clients_of_the_handshake_era_work_too(stack):
    async with mcp_client(stack, {"X-API-Key": stack.api_key}, mode="legacy") as client:
        assert client.protocol_version < "2026-07-28"
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        sid = (await call_ok(client, "create_sandbox", {"timeout": 60}))["sandbox_id"]
        try:
            out = await call_ok(client, "run_command", {"sandbox_id": sid, "command": "echo legacy"})
            assert out["stdout"] == "legacy\n"
        finally:
            await call_ok(client, "kill_sandbox", {"sandbox_id": sid})
