"""Helpers for the chart tests: `helm` and `kubectl` from the project's cache (make kube-bins),
rendering a chart into a list of objects, and finding objects in it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTROLLER_CHART = ROOT / "charts" / "kruise-agents-sandbox-controller"
MANAGER_CHART = ROOT / "charts" / "kruise-agents-sandbox-manager"
# A well-formed admin key and an IngressClass: the two values the manager chart requires.
ADMIN_KEY = "e2b_" + "0123456789abcdef0123456789abcdef01234567"
REQUIRED = ["--set", f"e2b.adminApiKey={ADMIN_KEY}", "--set", "ingress.className=nginx"]


def tool(env: str) -> str:
    path = os.environ.get(env)
    if not path or not Path(path).exists():
        pytest.fail(f"{env} is not set or missing (run through make test-charts)")
    return path


def helm(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [tool("HELM_BIN"), *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{out.stderr}")
    return out


def render(chart: Path, *args: str, namespace: str = "sandbox-system") -> list[dict]:
    """`helm template` → the rendered objects (CRDs included)."""
    out = helm("template", "release", str(chart), "--namespace", namespace, "--include-crds", *args)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render_error(chart: Path, *args: str) -> str:
    out = helm("template", "release", str(chart), "--namespace", "sandbox-system", *args, check=False)
    assert out.returncode != 0, "rendering should have failed"
    return out.stderr


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def has(docs: list[dict], kind: str, name: str | None = None) -> bool:
    return any(d["kind"] == kind and (name is None or d["metadata"]["name"] == name) for d in docs)


def container(deploy: dict, index: int = 0) -> dict:
    return deploy["spec"]["template"]["spec"]["containers"][index]


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
