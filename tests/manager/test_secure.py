"""Secure sandboxes: the create answer carries envdAccessToken; the gateway refuses envd calls
without it (or with a wrong one) and passes them with it; signed download/upload URLs work
through the gateway without the token, in every routing form the gateway accepts (headers,
`<port>-<id>.<domain>` host, `/kruise/<id>/<port>/` path) (reference e2b-protocol.md §2.3, §4.2,
§4.7)."""

import urllib.parse
import uuid

from e2b import Sandbox

from helpers import connect_unary, gateway_request


def multipart(filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def path_and_query(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def test_access_token_is_required_by_the_gateway(stack, kill_after):
    status, body, _ = stack.request(
        "POST", "/v2/sandboxes", {"templateID": "base", "timeout": 120, "metadata": {}, "envVars": {}}
    )
    assert status == 201, body
    sid = body["sandboxID"]
    kill_after.append(sid)
    token = body.get("envdAccessToken")
    assert isinstance(token, str) and len(token) >= 16, body
    status, detail, _ = stack.request("GET", f"/sandboxes/{sid}")
    assert detail.get("envdAccessToken") == token

    for label, tok in (("no token", None), ("wrong token", "not-" + token), ("empty token", "")):
        r = connect_unary(stack, sid, "process.Process/List", {}, token=tok)
        assert r.status in (401, 403), (label, r)
        r = gateway_request(stack, sid, "/files?path=.bashrc", token=tok)
        assert r.status in (401, 403), (label, r)
    # Repeated X-Access-Token headers are not a way around it.
    r = gateway_request(stack, sid, "/files?path=x", headers={"x-access-token": token + ", " + token})
    assert r.status in (400, 401, 403), r

    r = connect_unary(stack, sid, "process.Process/List", {}, token=token)
    assert r.status == 200, r
    assert "processes" in r.json() or r.json() == {}, r
    r = gateway_request(stack, sid, "/health", token=token)
    assert 200 <= r.status < 300, r

    # The same sandbox through the SDK (connect returns the token; the SDK sends it).
    sbx = Sandbox.connect(sid)
    assert sbx._envd_access_token == token
    assert sbx.commands.run("echo secured").stdout == "secured\n"


def test_secure_false_is_ignored(stack, kill_after):
    """Older SDKs send "secure" (2.37.1: true unless secure=False is passed; the code-interpreter
    tests pass secure=False). E2B's v2 sandboxes are always secured and upstream ignores the
    field: the reference says to treat it as always true and always return envdAccessToken
    (e2b-protocol.md §3.1, §3.9, §8.7; upstream-manager.md §1.3 "`secure` ... ignored")."""
    for path in ("/sandboxes", "/v2/sandboxes"):
        status, body, _ = stack.request("POST", path, {"templateID": "base", "timeout": 60, "secure": False})
        assert status == 201, body
        kill_after.append(body["sandboxID"])
        assert body.get("envdAccessToken"), (path, body)
        r = connect_unary(stack, body["sandboxID"], "process.Process/List", {})
        assert r.status in (401, 403), (path, r)


def test_token_of_another_sandbox_is_refused(stack, kill_after):
    a = Sandbox.create()
    b = Sandbox.create()
    kill_after.extend([a, b])
    assert a._envd_access_token != b._envd_access_token
    r = connect_unary(stack, a.sandbox_id, "process.Process/List", {}, token=b._envd_access_token)
    assert r.status in (401, 403), r


def test_signed_urls_through_the_gateway(stack, kill_after):
    sbx = Sandbox.create()
    kill_after.append(sbx)
    sid = sbx.sandbox_id
    sbx.files.write("signed/hello.txt", "signed content")

    url = sbx.download_url("signed/hello.txt")
    assert "signature=" in url, url
    pq = path_and_query(url)
    # The SDK's URL with the routing headers but no token.
    r = gateway_request(stack, sid, pq)
    assert r.status == 200, r
    assert r.body == b"signed content"
    # The per-sandbox host form, no E2B headers at all.
    r = gateway_request(stack, None, pq, host=f"49983-{sid}.localhost", route_headers=False)
    assert r.status == 200, r
    assert r.body == b"signed content"
    # The path form.
    r = gateway_request(stack, None, f"/kruise/{sid}/49983{pq}", route_headers=False)
    assert r.status == 200, r
    assert r.body == b"signed content"

    # A tampered signature, or none, is refused.
    tampered = pq.replace("signature=v1_", "signature=v1_A")
    r = gateway_request(stack, sid, tampered)
    assert r.status == 401, r
    r = gateway_request(stack, sid, "/files?path=signed%2Fhello.txt")
    assert r.status in (401, 403), r
    # The signature is for that path only.
    other = pq.replace("signed%2Fhello.txt", "signed%2Fother.txt")
    assert other != pq
    r = gateway_request(stack, sid, other)
    assert r.status == 401, r

    # With an expiration: valid until then; an expired one is refused with envd's message.
    r = gateway_request(stack, sid, path_and_query(sbx.download_url("signed/hello.txt", use_signature_expiration=120)))
    assert r.status == 200 and r.body == b"signed content", r
    r = gateway_request(stack, sid, path_and_query(sbx.download_url("signed/hello.txt", use_signature_expiration=-30)))
    assert r.status == 401, r
    assert "signature is already expired" in r.text, r

    # Upload through a signed URL, no token.
    up = sbx.upload_url("signed/uploaded.txt")
    body, ctype = multipart("uploaded.txt", b"uploaded through a signed URL")
    r = gateway_request(stack, sid, path_and_query(up), method="POST", body=body, headers={"content-type": ctype})
    assert r.status == 200, r
    assert sbx.files.read("signed/uploaded.txt") == "uploaded through a signed URL"
    # A download signature does not authorise an upload.
    r = gateway_request(stack, sid, pq, method="POST", body=body, headers={"content-type": ctype})
    assert r.status == 401, r
