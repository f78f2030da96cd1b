#!/usr/bin/env bash
# Builds SRC_DIR/venv, a CPU-only Python environment in which an unchanged ai-toolkit checkout (loraflow is
# checked against 27a03a91) trains loraflow's tiny Flux: what tests/engines/test_aitoolkit_real.py and
# `loraflow engines install ai-toolkit --from SRC_DIR` need. About 2 GB. Safe to re-run.
#
#   aitoolkit_cpu_env.sh SRC_DIR [DIFFUSERS]
#
# DIFFUSERS: a local diffusers checkout or wheel at the commit ai-toolkit pins (c943837, no PyPI release has
# it); without one the newest diffusers release is installed instead, and a note says so.
# Environment: PYTHON (default python3, 3.11+), TORCH_INDEX (default the PyTorch CPU index; set it empty to
# take torch and torchvision from pip's configured sources only); pip's own variables and config
# (PIP_INDEX_URL, PIP_FIND_LINKS, ...) work as usual, e.g. for a wheelhouse holding torch-2.13.0+cpu.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 SRC_DIR [DIFFUSERS]" >&2
    exit 2
fi
SRC="$(cd "$1" && pwd)"
DIFFUSERS="${2:-}"
PYTHON="${PYTHON:-python3}"
TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
VENV="$SRC/venv"
DONE="$VENV/.loraflow-cpu-env"
step() { echo "==> $*"; }

[ -f "$SRC/run.py" ] && [ -f "$SRC/requirements_base.txt" ] || {
    echo "$SRC is not an ai-toolkit checkout (no run.py / requirements_base.txt)" >&2
    exit 2
}
if [ -f "$DONE" ]; then
    echo "already built: $VENV"
    exit 0
fi

step "venv at $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

CONSTRAINTS="$VENV/loraflow-constraints.txt"
printf 'torch==2.13.0\ntorchvision==0.28.0\n' >"$CONSTRAINTS"

step "torch 2.13.0 (CPU)"
INDEX=()
[ -z "$TORCH_INDEX" ] || INDEX=(--extra-index-url "$TORCH_INDEX")
"$PY" -m pip install --progress-bar on torch==2.13.0 "${INDEX[@]}"
"$PY" -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed: give TORCH_INDEX a CPU index'"

# torchvision's wheel expects torch's CUDA libraries: installed without its dependencies (torch is there)
step "torchvision 0.28.0 (--no-deps)"
"$PY" -m pip install --progress-bar on numpy pillow
"$PY" -m pip install --no-deps torchvision==0.28.0 "${INDEX[@]}"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$PY" -c "import torchvision" 2>/dev/null; then
    # Its meta-kernel registrations fail on ops a CPU torch lacks; image LoRA training never calls them.
    step "guarding torchvision's meta registrations"
    META="$SITE/torchvision/_meta_registrations.py"
    if [ ! -f "$SITE/torchvision/_meta_registrations_unguarded.py" ]; then
        mv "$META" "$SITE/torchvision/_meta_registrations_unguarded.py"
        cat >"$META" <<'EOF'
# Guard written by loraflow's aitoolkit_cpu_env.sh: this torchvision build registers meta kernels for ops
# the CPU torch does not have; without them only those ops' meta (shape) functions are missing.
try:
    from torchvision._meta_registrations_unguarded import *  # noqa: F401,F403
except Exception:  # noqa: BLE001
    pass
EOF
    fi
    "$PY" -c "import torchvision"
fi

# torchaudio is imported at module level by toolkit/config_modules.py and used only for audio models
step "torchaudio stub"
if ! "$PY" -c "import torchaudio" 2>/dev/null; then
    mkdir -p "$SITE/torchaudio"
    cat >"$SITE/torchaudio/__init__.py" <<'EOF'
"""Empty stand-in written by loraflow's aitoolkit_cpu_env.sh: ai-toolkit imports torchaudio at start-up
but trains image LoRAs without it. Any use of it fails loudly."""

__version__ = "0.0.0+loraflow.stub"


def __getattr__(name):
    raise ImportError(f"torchaudio is a stub in this CPU environment (torchaudio.{name} was asked for)")
EOF
fi

step "diffusers"
if [ -n "$DIFFUSERS" ]; then
    "$PY" -m pip install --progress-bar on -c "$CONSTRAINTS" "$DIFFUSERS"
else
    echo "note: ai-toolkit pins diffusers at commit c943837 (no release has it); installing the newest release."
    echo "      For the exact one: $0 $SRC /path/to/diffusers-checkout-or-wheel"
    "$PY" -m pip install --progress-bar on -c "$CONSTRAINTS" diffusers
fi

# ai-toolkit's requirements, minus what is handled above or needs a GPU build; opencv without a display.
step "ai-toolkit's requirements (CPU)"
REQS="$VENV/loraflow-requirements.txt"
grep -v -E '^\s*(#|-r|git\+https://github.com/huggingface/diffusers|torchcodec|opencv-python\b)' \
    "$SRC/requirements_base.txt" >"$REQS"
# (its scipy pin has no wheel for newer Pythons: any scipy does for training)
grep -v -E '^\s*(#|-r)' "$SRC/requirements.txt" | sed -E 's/^scipy==.*/scipy/' >>"$REQS" || true
printf 'opencv-python-headless\n' >>"$REQS"
"$PY" -m pip install --progress-bar on -c "$CONSTRAINTS" -r "$REQS"

# imported on start-up although a Flux LoRA never uses them (pinned where a newer one breaks the import)
step "start-up imports"
"$PY" -m pip install --progress-bar on -c "$CONSTRAINTS" av mutagen lpips pytorch-wavelets open_clip_torch \
    controlnet_aux==0.0.10 bitsandbytes==0.50.2

step "checking that ai-toolkit imports"
(cd "$SRC" && "$PY" -c "import toolkit.config_modules, toolkit.stable_diffusion_model; print('ai-toolkit imports')")
touch "$DONE"
echo "built $VENV"
