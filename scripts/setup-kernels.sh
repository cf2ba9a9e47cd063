#!/usr/bin/env bash
# Installs the code interpreter's kernels' environment into a virtualenv (by default outside the
# repository, in the cache: make kernels): ipykernel, bash_kernel (its kernelspec installed into
# the venv), matplotlib, pandas and E2B's chart extractor e2b-charts, every version pinned in
# runtime/code-interpreter/kernel/requirements.txt, and matplotlib's font cache built once in
# <venv>/var/matplotlib (the service points MPLCONFIGDIR there, so no sandbox rebuilds it).
#
# usage: setup-kernels.sh VENV [STAMP]
# The venv is rebuilt from scratch; STAMP (a file) is created once everything is installed.
set -euo pipefail
venv=${1:?usage: setup-kernels.sh VENV [STAMP]}
stamp=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
req=$root/runtime/code-interpreter/kernel/requirements.txt
python=${PYTHON:-python3}

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install --upgrade pip >/dev/null
"${pip[@]}" install --no-deps -r "$req"
"${pip[@]}" check
"$venv/bin/python" -m bash_kernel.install --sys-prefix >/dev/null
mkdir -p "$venv/var/matplotlib"
MPLCONFIGDIR=$venv/var/matplotlib "$venv/bin/python" -c 'import matplotlib.pyplot, pandas, e2b_charts'
ls "$venv/share/jupyter/kernels" | sed 's/^/kernel: /'
if [ -n "$stamp" ]; then
    touch "$stamp"
fi
