"""Fixtures of the code interpreter end-to-end suite.

`cistack` (session scope) starts a private stack exactly as `make run` does — run-local.sh with
the committed config/local-templates.yaml, so the code-interpreter-v1 template the suite tests is
the one users get — with a warm pool of code-interpreter-v1 sandboxes and no `base` pool. The
Stack class is tests/manager's (loaded from its file: both directories have a conftest.py).
`sbx` is one sandbox shared by the tests that do not disturb it; the others create their own.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANAGER_TESTS = ROOT / "tests" / "manager"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


manager_stack = _load("manager_stack", MANAGER_TESTS / "conftest.py")
manager_helpers = _load("manager_helpers", MANAGER_TESTS / "helpers.py")
Stack = manager_stack.Stack


@pytest.fixture(scope="session")
def cistack(tmp_path_factory):
    for var in ("SANDBOX_MANAGER_BIN", "AGENT_RUNTIME_BIN", "SANDBOX_GATEWAY_MODULE", "ENVOY_BIN",
                "CODE_INTERPRETER_BIN", "CODE_INTERPRETER_KERNELS_VENV"):
        if not os.environ.get(var):
            pytest.exit(f"{var} is not set; run the suite with `make test-code-interpreter`", returncode=2)
    s = Stack.start(tmp_path_factory.mktemp("ci") / "stack", pool_size=0,
                    TEMPLATES=str(ROOT / "config" / "local-templates.yaml"),
                    CODE_INTERPRETER_POOL_SIZE="2")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sdk(cistack):
    """Keyword arguments for the SDK's Sandbox.create/connect."""
    return cistack.sdk_opts()


@pytest.fixture(scope="session")
def sbx(cistack, sdk):
    from e2b_code_interpreter import Sandbox

    s = Sandbox.create(timeout=600, **sdk)
    yield s
    s.kill()


@pytest.fixture
def new_sandbox(cistack, sdk):
    """Creates sandboxes of code-interpreter-v1 that are killed when the test ends."""
    from e2b_code_interpreter import Sandbox

    made = []

    def make(**kw):
        s = Sandbox.create(timeout=300, **{**sdk, **kw})
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.kill()
        except Exception:  # noqa: BLE001 - best effort clean-up
            pass
