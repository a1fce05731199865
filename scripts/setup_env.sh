#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install the package with
# the test extras (pytest, pytest-mpi, pytest-timeout, the mpich wheel, matplotlib).
# Source it: it exports VENV. Needs only python3 (3.11+) and pip with access to PyPI.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HOMODYNE_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.homodyne-installed"
if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
    echo "== installing homodyne_mpi[test] into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$REPO[test]"
    touch "$stamp"
fi
export VENV
