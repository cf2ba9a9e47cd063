"""Templates of the local backend: a service started beside the runtime in every sandbox (how
the code interpreter runs on port 49999), health-checked before the sandbox is offered, reached
through the gateway, killed with the sandbox; and a template whose service never becomes healthy."""


import pytest
from e2b import Sandbox

from conftest import Stack, processes_mentioning
from helpers import gateway_request, wait_until

TEMPLATES = """
templates:
  - id: web
    pool_size: 1
    setup: "mkdir -p site && echo served-by-the-template > site/index.html"
    services:
      - name: web
        command: [python3, -m, http.server, "{port}", --bind, "{ip}", --directory, "{home}/site"]
        port: 8080
        health_path: /index.html
  - id: broken
    pool_size: 0
    services:
      - name: never
        command: [/bin/sh, -c, "exit 3"]
        port: 8081
"""


@pytest.fixture(scope="module")
def tstack(tmp_path_factory):
    run = tmp_path_factory.mktemp("templates")
    (run / "templates.yaml").write_text(TEMPLATES)
    s = Stack.start(run / "stack", pool_size=0, TEMPLATES=str(run / "templates.yaml"),
                    MANAGER_ARGS="--startup-timeout 10")
    yield s
    s.stop()


@pytest.mark.local_only  # local template `services`
def test_a_template_service_runs_beside_the_runtime(tstack):
    sbx = Sandbox.create(template="web", **tstack.sdk_opts())
    try:
        # Offered only once its service answered: the first request through the gateway works.
        r = gateway_request(tstack, sbx.sandbox_id, "/index.html", port=8080)
        assert r.status == 200 and r.body.strip() == b"served-by-the-template", r
        assert sbx.commands.run("cat site/index.html").stdout.strip() == "served-by-the-template"
        # Paused with the sandbox, back with it.
        assert sbx.pause()
        r = gateway_request(tstack, sbx.sandbox_id, "/index.html", port=8080)
        assert r.status == 502, r
        sbx = Sandbox.connect(sbx.sandbox_id, **tstack.sdk_opts())
        r = gateway_request(tstack, sbx.sandbox_id, "/index.html", port=8080)
        assert r.status == 200, r
    finally:
        sbx.kill()
    sandbox_dir = str(tstack.data_dir / "sandboxes" / sbx.sandbox_id)
    wait_until(lambda: not processes_mentioning(sandbox_dir), timeout=30, what="the service to be killed with the sandbox")


@pytest.mark.local_only  # local template `services`
def test_a_service_that_never_gets_healthy_fails_the_create_clearly(tstack):
    status, body, headers = tstack.request("POST", "/v2/sandboxes", {"templateID": "broken"})
    assert status == 503, body
    assert "service never" in body["message"], body
    assert headers.get("retry-after"), headers
