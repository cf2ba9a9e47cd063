"""Authentication and teams: a missing or wrong API key is a 401 (AuthenticationException in the
SDK); a key of another team does not see the admin team's sandboxes (404 on get, kill, connect,
pause, timeout, snapshot; absent from lists) while the admin sees every team's (by design);
API-key management (list/create/patch/delete) and GET /teams shapes; a deleted key is refused
(reference e2b-protocol.md §3.5, §3.7; upstream-manager.md §1.3, §2)."""

import re
import urllib.parse

import pytest
from e2b import AuthenticationException, Sandbox, SandboxException, SandboxNotFoundException, SandboxQuery

from conftest import KIND
from helpers import assert_error_body, connect_unary, unique

KEY_SHAPE = re.compile(r"^e2b_[0-9a-f]+$")


def ids_listed(key: str, tag: str) -> list[str]:
    p = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), api_key=key)
    out = []
    while p.has_next:
        out.extend(s.sandbox_id for s in p.next_items())
    return out


def create_key(stack, name: str, team: str | None = None, key: str = "admin") -> dict:
    body = {"name": name}
    if team is not None:
        body["teamName"] = team
    status, created, _ = stack.request("POST", "/api-keys", body, key=key)
    assert status == 201, created
    return created


def test_missing_and_wrong_keys(stack, monkeypatch):
    for path in ("/v2/sandboxes", "/sandboxes/abc", "/teams", "/api-keys", "/snapshots"):
        status, body, _ = stack.request("GET", path, key=None)
        assert status == 401, (path, body)
        assert_error_body(body, 401)
        status, body, _ = stack.request("GET", path, key="e2b_" + "0" * 40)
        assert status == 401, (path, body)
        assert_error_body(body, 401)
    status, body, _ = stack.request("POST", "/v2/sandboxes", {"templateID": "base"}, key="not-a-key")
    assert status == 401, body
    assert_error_body(body, 401)

    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "1" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "1" * 40).next_items()
    monkeypatch.delenv("E2B_API_KEY")
    with pytest.raises(AuthenticationException):
        Sandbox.create()


def test_teams_are_isolated(stack, kill_after, team_pool):
    tag = unique("teams")
    team_pool("team-b")
    created = create_key(stack, "t", team="team-b")
    kb = created["key"]
    assert KEY_SHAPE.match(kb), created
    assert created["team"]["name"] == "team-b"

    mine = Sandbox.create(metadata={"tag": tag, "owner": "admin"})
    kill_after.append(mine)
    theirs = Sandbox.create(metadata={"tag": tag, "owner": "team-b"}, api_key=kb)
    kill_after.append(theirs)
    sid = mine.sandbox_id

    # team-b cannot see or touch the admin team's sandbox: 404 everywhere, like a missing one.
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sid, api_key=kb)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sid, api_key=kb)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout(sid, 60, api_key=kb)
    assert Sandbox.kill(sid, api_key=kb) is False
    for method, path, body in (
        ("GET", f"/sandboxes/{sid}", None),
        ("DELETE", f"/sandboxes/{sid}", None),
        ("POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 60}),
        ("POST", f"/sandboxes/{sid}/pause", {}),
        ("POST", f"/sandboxes/{sid}/timeout", {"timeout": 60}),
        ("POST", f"/sandboxes/{sid}/snapshots", {}),
        ("GET", f"/sandboxes/{sid}/metrics", None),
    ):
        status, resp, _ = stack.request(method, path, body, key=kb)
        assert status == 404, (method, path, resp)
        assert_error_body(resp, 404)
    assert ids_listed(kb, tag) == [theirs.sandbox_id]
    assert mine.get_info().state.value == "running", "team-b's attempts changed nothing"
    assert mine.commands.run("echo ok").stdout == "ok\n"

    # team-b works with its own sandbox; the admin team sees every team's (by design).
    assert theirs.commands.run("echo b").stdout == "b\n"
    assert Sandbox.get_info(theirs.sandbox_id, api_key=kb).metadata["owner"] == "team-b"
    assert sorted(ids_listed(stack.api_key, tag)) == sorted([sid, theirs.sandbox_id])
    assert Sandbox.get_info(theirs.sandbox_id).sandbox_id == theirs.sandbox_id

    # Another key of team-b (made by team-b itself) sees team-b's sandbox.
    kb2 = create_key(stack, "t2", key=kb)
    assert kb2["team"]["name"] == "team-b"
    assert ids_listed(kb2["key"], tag) == [theirs.sandbox_id]

    # team-b's snapshots are team-b's (snapshots are not in the kube backend yet).
    if KIND == "local":
        team_b_snapshots(stack, theirs, kb)

    # The envd token of team-b's sandbox is not accepted for the admin's sandbox.
    r = connect_unary(stack, sid, "process.Process/List", {}, token=theirs._envd_access_token)
    assert r.status in (401, 403), r

    assert Sandbox.kill(theirs.sandbox_id, api_key=kb) is True


def team_b_snapshots(stack, theirs, kb):
    snap = theirs.create_snapshot()
    status, body, _ = stack.request("GET", "/snapshots", key=kb)
    assert snap.snapshot_id in [s["snapshotID"] for s in body]
    with pytest.raises(SandboxException) as e:
        Sandbox.create(template=snap.snapshot_id, api_key=create_key(stack, "c", team="team-c")["key"])
    assert getattr(e.value, "status_code", None) == 404, e.value
    assert Sandbox.delete_snapshot(snap.snapshot_id, api_key=kb) is True


def test_api_keys_and_teams(stack):
    team = "team-" + unique("k").split("-")[1]
    created = create_key(stack, "ci", team=team)
    for k in ("id", "name", "key", "mask", "createdAt", "team"):
        assert k in created, (k, created)
    assert created["name"] == "ci"
    assert KEY_SHAPE.match(created["key"]), created
    assert created["team"]["name"] == team and created["team"]["id"]
    mask = created["mask"]
    assert isinstance(mask, dict), mask
    assert created["key"].endswith(mask["maskedValueSuffix"]), mask
    key, key_id = created["key"], created["id"]

    # The team's own view: its keys only (never the admin key), its team only.
    status, keys, _ = stack.request("GET", "/api-keys", key=key)
    assert status == 200, keys
    assert [k["id"] for k in keys] == [key_id]
    assert "key" not in keys[0], "listed keys do not carry their value"
    for k in ("id", "name", "mask", "createdAt"):
        assert k in keys[0], (k, keys[0])
    status, teams, _ = stack.request("GET", "/teams", key=key)
    assert status == 200, teams
    assert [t["name"] for t in teams] == [team]
    for k in ("teamID", "name", "apiKey", "isDefault"):
        assert k in teams[0], (k, teams[0])
    assert teams[0]["isDefault"] is True
    assert teams[0]["teamID"] == created["team"]["id"]

    # The admin sees every team.
    status, teams, _ = stack.request("GET", "/teams")
    assert status == 200, teams
    names = [t["name"] for t in teams]
    assert "admin" in names and team in names
    status, keys, _ = stack.request("GET", "/api-keys")
    assert key_id in [k["id"] for k in keys]

    # A non-admin cannot create keys for another team, nor delete the admin's key.
    status, body, _ = stack.request("POST", "/api-keys", {"name": "x", "teamName": "admin"}, key=key)
    assert status == 403, body
    assert_error_body(body, 403)
    for bad in ({}, {"name": ""}, {"name": "x", "unknown": 1}, {"name": "x", "teamName": "Bad--Name"}):
        status, body, _ = stack.request("POST", "/api-keys", bad)
        assert status == 400, (bad, body)
        assert_error_body(body, 400)

    # Rename.
    status, renamed, _ = stack.request("PATCH", f"/api-keys/{key_id}", {"name": "renamed"}, key=key)
    assert status == 200, renamed
    assert renamed["name"] == "renamed" and renamed["id"] == key_id
    status, keys, _ = stack.request("GET", "/api-keys", key=key)
    assert [k["name"] for k in keys] == ["renamed"]
    status, body, _ = stack.request("PATCH", f"/api-keys/{key_id}", {"name": "x", "extra": True})
    assert status == 400, body
    status, body, _ = stack.request("PATCH", "/api-keys/00000000-0000-0000-0000-000000000000", {"name": "x"})
    assert status == 404, body
    assert_error_body(body, 404)

    # Delete: the key is refused from then on; deleting again is a 404.
    other = create_key(stack, "second", key=key)
    status, body, _ = stack.request("DELETE", f"/api-keys/{key_id}", key=other["key"])
    assert status == 204, body
    status, body, _ = stack.request("GET", "/v2/sandboxes", key=key)
    assert status == 401, body
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key=key).next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key=key)
    status, body, _ = stack.request("DELETE", f"/api-keys/{key_id}")
    assert status == 404, body
    assert_error_body(body, 404)
    status, body, _ = stack.request("GET", "/v2/sandboxes", key=other["key"])
    assert status == 200, "the other key of the team still works"

    # The admin key itself cannot be deleted.
    status, keys, _ = stack.request("GET", "/api-keys")
    admin_ids = [k["id"] for k in keys if stack.api_key.endswith(k["mask"]["maskedValueSuffix"]) and k["name"] == "admin"]
    assert admin_ids, keys
    status, body, _ = stack.request("DELETE", f"/api-keys/{urllib.parse.quote(admin_ids[0])}")
    assert status == 403, body
    assert_error_body(body, 403)
    status, _, _ = stack.request("GET", "/v2/sandboxes")
    assert status == 200
