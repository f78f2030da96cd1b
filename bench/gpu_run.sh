#!/usr/bin/env bash
# The GPU measurements of issue 17 in one device run (an H100/H200-class card; about 8 minutes).
#
# On the machine with network, from the repository root:
#   bash bench/fetch_gpu_wheels.sh           # diffusers, pydantic, torchao, bitsandbytes wheels into .whl/
# then, with the device tool:
#   run(command="bash bench/gpu_run.sh", carry=[".whl"], timeout_s=600)
# and copy back what it returns ($OUT/gpu_step.json -> bench/results/gpu_step.json, $OUT/README.md ->
# bench/README.md, whose table the run filled in). The JSON is written after every configuration, so a
# run cut short still returns what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
# A quantization library that does not load against this torch would break every run (peft imports it when
# present): drop it, and only its fp8/nf4 runs fail, each with the import error in the results.
for mod in torchao bitsandbytes; do
  if ! python3 -c "import $mod" >>"$OUT/gpu.txt" 2>&1; then
    echo "$mod does not import here: removed" | tee -a "$OUT/gpu.txt"
    rm -rf "/tmp/site/$mod" /tmp/site/"$mod"-*.dist-info
  fi
done
python3 -c "import torch, diffusers, peft, pydantic; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'peft', peft.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/gpu.txt"
# The acceptance numbers first (1024/512 px, batch 1, builtin and bare loop), then each VRAM preset on its
# emulated card, the changed 80 GB one and the 24 GB one (peak <= 21.6 GiB) first; no new configuration
# starts after BUDGET_S seconds, so the whole call ends inside the device tool's 10 minutes.
python3 bench/gpu_step.py --quick --presets 24 80 16 12 48 --budget-s "${BUDGET_S:-400}" --timeout 180 \
  --out "$OUT/gpu_step.json" --update-readme 2>&1 | tee "$OUT/gpu_step.log"
cp bench/README.md "$OUT/README.md"
