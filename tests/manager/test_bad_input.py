"""Bad and unusual input on the REST API (raw HTTP): JSON errors, types, timeouts, body size,
metadata extension keys (`e2b.agents.kruise.io/...`, `label:`), create-on-no-stock on an empty
pool, Idempotency-Key, unknown ids and routes. Every error is JSON {code, message} (reference
e2b-protocol.md §3.2, §3.5, §3.6, §3.8; upstream-manager.md §1.3, §3.3)."""

import ipaddress
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2b import Sandbox, SandboxException, ServiceBusyException

from conftest import KIND, Stack
from helpers import assert_error_body, unique

NEVER = "0001-01-01T00:00:00Z"
EXT = "e2b.agents.kruise.io/"


def create(stack, body, **kw):
    return stack.request("POST", "/v2/sandboxes", body, **kw)


def created_id(stack, kill_after, body, **kw) -> tuple[str, dict]:
    status, resp, headers = create(stack, body, **kw)
    assert status == 201, resp
    kill_after.append(resp["sandboxID"])
    return resp["sandboxID"], resp


@pytest.mark.parametrize(
    "raw",
    [b'{"templateID": "base",', b"not json", b"[]", b'["base"]', b'"base"', b"42", b"null", b'{"templateID": "base"} trailing'],
    ids=["truncated", "garbage", "empty-array", "array", "string", "number", "null", "trailing"],
)
def test_malformed_bodies_are_400(stack, raw):
    for path in ("/v2/sandboxes", "/sandboxes"):
        status, body, _ = stack.request("POST", path, raw=raw)
        assert status == 400, (path, raw, body)
        assert_error_body(body, 400)


def test_field_types_and_required_fields(stack, kill_after):
    for body in (
        {"templateID": 5},
        {"templateID": ["base"]},
        {"templateID": "base", "timeout": "60"},
        {"templateID": "base", "timeout": 1.5},
        {"templateID": "base", "metadata": {"k": 1}},
        {"templateID": "base", "metadata": ["k"]},
        {"templateID": "base", "envVars": {"A": None}},
        {"templateID": "base", "autoPause": "yes"},
    ):
        status, resp, _ = create(stack, body)
        assert status == 400, (body, resp)
        assert_error_body(resp, 400)
    # Unknown fields are ignored, as E2B's API does.
    sid, resp = created_id(stack, kill_after, {"templateID": "base", "timeout": 60, "someFutureField": {"x": [1]}, "secure": True})
    assert resp["templateID"] == "base"


def test_unknown_template_is_404(stack):
    status, body, _ = create(stack, {"templateID": "no-such-template-" + unique()})
    assert status == 404, body
    assert_error_body(body, 404)
    with pytest.raises(SandboxException) as e:
        Sandbox.create(template="no-such-template")
    assert getattr(e.value, "status_code", None) == 404, e.value


def test_timeout_bounds(stack, kill_after):
    for t in (0, -1, -300, 2_592_001, 10**12):
        status, body, _ = create(stack, {"templateID": "base", "timeout": t})
        assert status == 400, (t, body)
        assert_error_body(body, 400)
    sid, _ = created_id(stack, kill_after, {"templateID": "base", "timeout": 2_592_000})
    for t in (-1, 2_592_001):
        status, body, _ = stack.request("POST", f"/sandboxes/{sid}/timeout", {"timeout": t})
        assert status == 400, (t, body)
        assert_error_body(body, 400)
        status, body, _ = stack.request("POST", f"/v2/sandboxes/{sid}/connect", {"timeout": t})
        assert status == 400, (t, body)
        assert_error_body(body, 400)


def test_oversized_body_is_413(stack):
    raw = json.dumps({"templateID": "base", "metadata": {"big": "x" * (2 * 1024 * 1024)}}).encode()
    status, body, _ = stack.request("POST", "/v2/sandboxes", raw=raw)
    assert status == 413, body
    assert_error_body(body, 413)


def test_kubernetes_only_extension_keys_are_refused(stack):
    """The local backend refuses every Kubernetes-only key; the kube backend those it does not
    carry out yet (it updates the image and resizes CPU in place: test_kube.py)."""
    refused = [("csi-volume-name", "pv")]
    if KIND == "local":
        refused += [("image", "busybox:latest"), ("cpu-limit", "2")]
    for key, value in refused:
        status, body, _ = create(stack, {"templateID": "base", "metadata": {EXT + key: value}})
        assert status == 400, (key, body)
        assert_error_body(body, 400)
        assert EXT + key in body["message"], body
    for meta in ({EXT + "no-such-extension": "1"}, {EXT + "never-timeout": "yes"}, {"agents.kruise.io/owner": "me"}):
        status, body, _ = create(stack, {"templateID": "base", "metadata": meta})
        assert status == 400, (meta, body)
        assert_error_body(body, 400)
        assert next(iter(meta)) in body["message"], body


def test_extension_keys(stack, kill_after):
    tag = unique("ext")
    sid, _ = created_id(
        stack,
        kill_after,
        {
            "templateID": "base",
            "metadata": {
                "tag": tag,
                EXT + "never-timeout": "true",
                EXT + "return-sandbox-ip": "true",
                "label:app": "web",
            },
        },
    )
    status, detail, _ = stack.request("GET", f"/sandboxes/{sid}")
    assert status == 200, detail
    assert detail["endAt"] == NEVER, detail
    meta = detail["metadata"]
    assert meta.get("app") == "web", meta
    assert meta.get("tag") == tag, meta
    ip = ipaddress.ip_address(meta[EXT + "sandbox-ip"])
    # A loopback address of its own (the local backend's range, or the node simulator's).
    assert ip.is_loopback and str(ip) != "127.0.0.1", ip
    assert EXT + "never-timeout" not in meta and "label:app" not in meta, meta
    status, listed, _ = stack.request("GET", "/v2/sandboxes")
    mine = [s for s in listed if s["sandboxID"] == sid]
    assert mine and mine[0]["endAt"] == NEVER, mine
    # The SDK parses the zero time.
    info = Sandbox.get_info(sid)
    assert info.end_at.year == 1
    assert info.metadata["app"] == "web"
    # The IP is the sandbox's own address.
    sbx = Sandbox.connect(sid)
    assert sbx.commands.run("echo up").stdout == "up\n"

    # Without return-sandbox-ip there is no IP in the metadata.
    sid2, _ = created_id(stack, kill_after, {"templateID": "base", "metadata": {"tag": tag}})
    status, detail, _ = stack.request("GET", f"/sandboxes/{sid2}")
    assert EXT + "sandbox-ip" not in detail["metadata"], detail
    assert detail["endAt"] != NEVER


def test_idempotency_key(stack, kill_after):
    key = str(uuid.uuid4())
    body = {"templateID": "base", "timeout": 120, "metadata": {"idem": key}}
    s1, r1, _ = stack.request("POST", "/v2/sandboxes", body, headers={"Idempotency-Key": key})
    assert s1 == 201, r1
    kill_after.append(r1["sandboxID"])
    s2, r2, _ = stack.request("POST", "/v2/sandboxes", body, headers={"Idempotency-Key": key})
    assert s2 == 201, r2
    kill_after.append(r2["sandboxID"])
    assert r2["sandboxID"] == r1["sandboxID"]
    s3, r3, _ = stack.request("POST", "/v2/sandboxes", dict(body, timeout=121), headers={"Idempotency-Key": key})
    assert s3 == 409, r3
    assert_error_body(r3, 409)
    # A different key is a different sandbox.
    s4, r4, _ = stack.request("POST", "/v2/sandboxes", body, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert s4 == 201, r4
    kill_after.append(r4["sandboxID"])
    assert r4["sandboxID"] != r1["sandboxID"]

    # Concurrent retries with one key make one sandbox.
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: stack.request("POST", "/v2/sandboxes", body, headers={"Idempotency-Key": key}), range(6)))
    for status, resp, _ in answers:
        assert status == 201, resp
        kill_after.append(resp["sandboxID"])
    assert len({resp["sandboxID"] for _, resp, _ in answers}) == 1, answers

    # Through the SDK.
    sdk_key = str(uuid.uuid4())
    a = Sandbox.create(idempotency_key=sdk_key)
    kill_after.append(a)
    b = Sandbox.create(idempotency_key=sdk_key)
    assert a.sandbox_id == b.sandbox_id


def test_unknown_ids_and_routes(stack):
    for method, path, body in (
        ("GET", "/sandboxes/doesnotexist0000", None),
        ("DELETE", "/sandboxes/doesnotexist0000", None),
        ("POST", "/sandboxes/doesnotexist0000/pause", {}),
        ("POST", "/sandboxes/doesnotexist0000/timeout", {"timeout": 30}),
        ("POST", "/sandboxes/doesnotexist0000/connect", {"timeout": 30}),
        ("POST", "/v2/sandboxes/doesnotexist0000/connect", {"timeout": 30}),
        ("GET", "/sandboxes/doesnotexist0000/metrics", None),
        ("GET", "/sandboxes/not-a-valid-id", None),
        ("GET", "/sandboxes/%2e%2e", None),
        ("GET", "/no/such/route", None),
        ("GET", "/templates/no-such-template", None),
    ):
        status, resp, _ = stack.request(method, path, body)
        assert status == 404, (method, path, resp)
        assert_error_body(resp, 404)
    status, resp, _ = stack.request("PUT", "/v2/sandboxes")
    assert status == 405, resp
    assert_error_body(resp, 405)


def test_kruise_api_prefix(stack, kill_after):
    status, resp, _ = stack.request("POST", "/kruise/api/v2/sandboxes", {"templateID": "base"})
    assert status == 201, resp
    sid = resp["sandboxID"]
    kill_after.append(sid)
    status, detail, _ = stack.request("GET", f"/kruise/api/sandboxes/{sid}")
    assert status == 200 and detail["sandboxID"] == sid, detail
    status, detail, _ = stack.request("GET", f"/sandboxes/{sid}")
    assert status == 200, detail
    status, resp, _ = stack.request("DELETE", f"/kruise/api/sandboxes/{sid}")
    assert status == 204, resp


@pytest.mark.local_only  # starts a private local stack
def test_create_on_no_stock_false_on_an_empty_pool(tmp_path):
    s = Stack.start(tmp_path / "empty-pool", pool_size=0)
    try:
        meta = {EXT + "create-on-no-stock": "false"}
        status, body, headers = s.request("POST", "/v2/sandboxes", {"templateID": "base", "metadata": meta})
        assert status == 503, body
        assert_error_body(body, 503)
        assert headers.get("retry-after", "").isdigit(), dict(headers)
        with pytest.raises(ServiceBusyException):
            Sandbox.create(metadata=meta, **s.sdk_opts())
        # Without the key, a create on an empty pool starts a sandbox (create-on-no-stock is the
        # default).
        sbx = Sandbox.create(**s.sdk_opts())
        assert sbx.commands.run("echo cold").stdout == "cold\n"
        assert sbx.kill() is True
    finally:
        s.stop()
