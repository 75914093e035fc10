#!/bin/bash
# On a lent GPU machine (the device tool's `run`, carrying `.whl` from wheels.sh): the
# bench's plain loop, inprocess, probes-off and vectorized runners on CUDA, one bench
# invocation per case so that each finished case comes back even if a later one is cut
# short. Writes hardware.txt and, per case, CASE/bench.json and CASE.log under $OUT.
#   CASES="tiny pfl-short small" REPEATS=2 DEVICE=cuda PYTHON=python3 CASE_SECONDS=200
set -uo pipefail
cd "$(dirname "$0")/../../.."
py=${PYTHON:-python3}
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/fedbatch-site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/fedbatch-site:$PWD PYTHONUNBUFFERED=1
out=${OUT:-/tmp/fedbatch-gpu}
mkdir -p "$out"
{
  date -u +%Y-%m-%dT%H:%MZ
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  echo "cpus $(nproc)"
} | tee "$out/hardware.txt"
for case in ${CASES:-tiny pfl-short small}; do
  timeout "${CASE_SECONDS:-200}" "$py" -m fedbatch.bench --case "$case" \
    --runners plain,inprocess,probes-off,vectorized --repeats "${REPEATS:-2}" \
    --device "${DEVICE:-cuda}" --out "$out/$case" >"$out/$case.log" 2>&1
  echo "$case: exit $?"
  tail -n 9 "$out/$case.log"
done
