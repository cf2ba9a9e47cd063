"""Helpers shared by the sandbox-manager end-to-end tests (both SDK generations): polling with an
upper bound instead of fixed sleeps, raw requests to the gateway (the data plane), and the
checks every API error body must pass."""

import http.client
import json
import secrets
import time
import urllib.parse

ENVD_PORT = 49983


def wait_until(predicate, timeout: float = 60, interval: float = 0.1, what: str = "the condition"):
    """Calls `predicate` until it returns a truthy value (returned) or `timeout` seconds pass
    (AssertionError naming `what` and the last exception the predicate raised, if any)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
        except Exception as e:  # noqa: BLE001 - reported if the wait fails
            value, last_error = None, e
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}"
                + (f"; last error: {last_error!r}" if last_error else "")
            )
        time.sleep(interval)


def unique(prefix: str = "t") -> str:
    """A value no other test (or earlier run) uses, for metadata filters."""
    return f"{prefix}-{secrets.token_hex(6)}"


class GatewayResponse:
    def __init__(self, status: int, body: bytes, headers):
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:300]!r}>"


def gateway_request(
    stack,
    sandbox_id: str | None,
    path: str,
    method: str = "GET",
    token: str | None = None,
    port: int = ENVD_PORT,
    headers: dict | None = None,
    body: bytes | None = None,
    host: str | None = None,
    route_headers: bool = True,
    timeout: float = 30,
) -> GatewayResponse:
    """A raw HTTP/1.1 request to the gateway (`E2B_SANDBOX_URL`). By default it names the sandbox
    with the `e2b-sandbox-id`/`e2b-sandbox-port` headers as the SDK does; `host` replaces the Host
    header (e.g. `49983-<id>.localhost`), `route_headers=False` leaves the routing headers out."""
    url = urllib.parse.urlsplit(stack.gateway_url)
    h = dict(headers or {})
    if route_headers and sandbox_id is not None:
        h["e2b-sandbox-id"] = sandbox_id
        h["e2b-sandbox-port"] = str(port)
    if token is not None:
        h["x-access-token"] = token
    if host is not None:
        h["Host"] = host
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return GatewayResponse(r.status, r.read(), r.headers)
    finally:
        conn.close()


def connect_unary(stack, sandbox_id: str, rpc: str, message: dict, token: str | None = None, **kw) -> GatewayResponse:
    """A unary Connect (JSON) call to envd through the gateway, e.g. `process.Process/List`."""
    return gateway_request(
        stack,
        sandbox_id,
        f"/{rpc}",
        method="POST",
        token=token,
        headers={"content-type": "application/json", "connect-protocol-version": "1"},
        body=json.dumps(message).encode(),
        **kw,
    )


def assert_error_body(body, status: int | None = None):
    """Every API error is JSON with an integer `code` (the status) and a string `message`."""
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    assert isinstance(body.get("code"), int) and not isinstance(body.get("code"), bool), body
    assert isinstance(body.get("message"), str) and body["message"], body
    if status is not None:
        assert body["code"] == status, body


def assert_sandbox_gone_502(resp: GatewayResponse, sandbox_id: str):
    """The gateway's answer for a sandbox that does not exist (any more): 502 JSON whose message
    contains "was not found" (what the SDK matches)."""
    assert resp.status == 502, resp
    body = resp.json()
    assert "was not found" in body.get("message", ""), body
    assert body.get("code") == 502, body
    assert body.get("sandboxId") == sandbox_id, body
