#!/usr/bin/env bash
# Demo job: set up the environment, simulate a small laminar-flow data set and fit it
# under mpiexec -n 2. Everything lands in ./demo (config, data, truth, results).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup_env.sh"
mkdir -p demo
cd demo
"$VENV/bin/python" "$REPO/scripts/make_demo_config.py" demo.yaml
"$VENV/bin/homodyne-mpi" simulate demo.yaml --output demo.h5 --noise 0.01 --seed 7 --phi=-60,-30,0,30,60,90
"$VENV/bin/homodyne-mpi" validate demo.yaml > /dev/null
"$VENV/bin/mpiexec" -n 2 "$VENV/bin/homodyne-mpi" run demo.yaml --method nlsq --output-dir results
"$VENV/bin/homodyne-mpi" report results 2>/dev/null || true
echo "== demo done: truth in demo/demo.h5.truth.json, fit in demo/results/demo/nlsq/result.json"
