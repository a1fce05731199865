#!/usr/bin/env bash
# Static checks, run by CI before the tests: ruff's lint rules and its formatting check over
# the package, the tests and the scripts, then mypy over the package (settings in
# pyproject.toml). Every check runs; the exit code is 1 if any of them failed.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup_env.sh || exit 1
status=0
echo "== ruff check"
"$VENV/bin/ruff" check homodyne_mpi tests scripts || status=1
echo "== ruff format --check"
"$VENV/bin/ruff" format --check homodyne_mpi tests scripts || status=1
echo "== mypy homodyne_mpi"
"$VENV/bin/mypy" homodyne_mpi || status=1
exit $status
