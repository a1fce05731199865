#!/usr/bin/env bash
# The whole test suite: serial tests, then the MPI tests under mpiexec -n 2 and -n 4
# (oversubscribed on a small machine). A failing assertion on one rank aborts the job
# (python -m mpi4py plus the conftest hook), and every MPI run has a timeout, so a hang
# fails instead of blocking. Extra arguments go to every pytest call.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup_env.sh
export HOMODYNE_TEST_TMP="${HOMODYNE_TEST_TMP:-$(mktemp -d)}"
status=0
echo "== serial tests"
"$VENV/bin/python" -m pytest -q -m "not mpi" "$@" tests || status=1
for ranks in 2 4; do
    echo "== MPI tests under mpiexec -n $ranks"
    timeout --signal=KILL 1200 "$VENV/bin/mpiexec" -n "$ranks" \
        "$VENV/bin/python" -m mpi4py -m pytest -q --with-mpi -m mpi -p no:cacheprovider "$@" tests || status=1
done
exit $status
