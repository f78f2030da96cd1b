#!/usr/bin/env bash
# Download, on a machine with network, the wheels bench/gpu_run.sh needs on a GPU machine without one
# (its image has torch, transformers, peft, safetensors, pyyaml; not diffusers, pydantic, torchao or
# bitsandbytes). They land in .whl/ (ignored by git through .git/info/exclude) for the device run to carry.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE="$(git rev-parse --git-common-dir)/info/exclude"
grep -qxF "/.whl/" "$EXCLUDE" 2>/dev/null || echo "/.whl/" >> "$EXCLUDE"
mkdir -p .whl
PY=${PYTHON:-/work/main/.venv/bin/python}
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  torchao==0.18.0 typing-extensions==4.16.0 "${@}"
# bitsandbytes (nf4 base, adamw8bit) is large; fetched apart so a size problem names it.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  bitsandbytes==0.50.2 || echo "bitsandbytes: no wheel fetched; nf4 and adamw8bit runs will record the import error"
du -sh .whl; ls -la .whl
