#!/usr/bin/env bash
# The whole-job bench of issue 31 (bench/gpu_job.py) on a lent GPU machine, in device calls of under 10 minutes.
#
# On the machine with network, from the repository root: bash bench/fetch_gpu_wheels.sh (wheels into .whl/).
# Then with the device tool, on one warm machine (its files stay between calls):
#   run(command="bash bench/gpu_job_run.sh prepare", carry=[".whl"], timeout_s=600)   # model + data, ~3 min
#   run(command="bash bench/gpu_job_run.sh 1", carry=[".whl"], timeout_s=600)         # 1000 steps, 1 GPU
#   run(command="bash bench/gpu_job_run.sh 2 4 8", carry=[".whl"], timeout_s=600)     # where the machine has them
# and copy back $OUT/gpu_job.json -> bench/results/gpu_job.json; then fill bench/README.md's whole-job table.
# The JSON is written after every job, so a call cut short still returns what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/loraflow-gpu-job}
source bench/gpu_env.sh
if [ "${1:-}" = prepare ]; then
  python3 bench/gpu_job.py --work "$WORK" --prepare-only 2>&1 | tee "$OUT/gpu_job_prepare.log"
  exit
fi
cp "$WORK/gpu_job.json" "$OUT/gpu_job.json" 2>/dev/null
python3 bench/gpu_job.py --work "$WORK" --gpus "$@" --timeout 560 --out "$WORK/gpu_job.json" 2>&1 | tee "$OUT/gpu_job.log"
cp "$WORK/gpu_job.json" "$OUT/gpu_job.json"
