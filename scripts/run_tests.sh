#!/usr/bin/env bash
# The whole test suite: serial tests, then the MPI tests under mpiexec -n 2 and -n 4
# (oversubscribed on a small machine). A failing assertion on one rank aborts the job
# (python -m mpi4py plus the conftest hook), and every MPI run has a timeout, so a hang
# fails instead of blocking. Extra arguments go to every pytest call.
# HOMODYNE_TEST_MARKERS narrows both runs with a pytest marker expression, for example
# HOMODYNE_TEST_MARKERS="not slow and not slurm" (markers in pyproject.toml).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup_env.sh
export HOMODYNE_TEST_TMP="${HOMODYNE_TEST_TMP:-$(mktemp -d)}"
serial="not mpi"
parallel="mpi"
if [ -n "${HOMODYNE_TEST_MARKERS:-}" ]; then
    serial="$serial and ($HOMODYNE_TEST_MARKERS)"
    parallel="$parallel and ($HOMODYNE_TEST_MARKERS)"
fi
status=0
echo "== serial tests ($serial)"
"$VENV/bin/python" -m pytest -q --durations=15 -m "$serial" "$@" tests || status=1
for ranks in 2 4; do
    echo "== MPI tests under mpiexec -n $ranks ($parallel)"
    timeout --signal=KILL 1200 "$VENV/bin/mpiexec" -n "$ranks" \
        "$VENV/bin/python" -m mpi4py -m pytest -q --with-mpi -m "$parallel" -p no:cacheprovider "$@" tests || status=1
done
exit $status
