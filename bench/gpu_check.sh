#!/usr/bin/env bash
# One command on a lent GPU machine (one GPU, under 8 minutes), everything written to one folder:
#
#   bench/gpu_check.sh --out "$OUT/gpu-check"        # on the GPU machine, from the repository root
#   bench/gpu_check.sh --dry-run --out /tmp/check    # here, on the CPU: tiny shapes, same script
#
# 1. installs the carried wheels of .whl/ (bench/fetch_gpu_wheels.sh fills it here) into a
#    separate folder (pip --no-index --no-deps --target, then PYTHONPATH): only the wheels whose
#    distribution the image lacks, so the image's torch and everything else it has stay as they are;
#    then llmkit from the working tree (--no-deps), from a copy of the tree's package files;
# 2-4. bench/gpu_check.py: random Qwen2.5-0.5B- and 1.5B-shaped models, `llmkit sft` (LoRA, full,
#    packed, Liger, FlashAttention when importable), DPO, GRPO (and QLoRA with bitsandbytes) against
#    the plain TRL scripts: tokens/s, s/step, peak GPU memory, MFU, llmkit/TRL ratios;
#    nvidia-smi and the versions used. Other options go to gpu_check.py (--steps, --budget-s, --only).
#
# Environment: PYTHON (default python3), WHEEL_DIR (default .whl), SITE (default
# /tmp/llmkit-gpu-check/site: where the wheels and llmkit are installed; it is emptied first).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # the commands below change directory
OUT=""
DRY=0
ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=$2; ARGS+=(--out "$2"); shift 2 ;;
    --out=*) OUT=${1#--out=}; ARGS+=("$1"); shift ;;
    --dry-run) DRY=1; ARGS+=("$1"); shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[[ -n $OUT ]] || { echo "usage: bench/gpu_check.sh [--dry-run] --out DIR [gpu_check.py options]" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# nothing heavy beside OUT (on a lent machine OUT is what comes back): the installed packages here,
# models and run directories in gpu_check.py's --work (default /tmp/llmkit-gpu-check/work[-dry])
SITE=${SITE:-/tmp/llmkit-gpu-check/site}
WHEELS=${WHEEL_DIR:-$REPO/.whl}
LOG=$OUT/install.log
: > "$LOG"
say() { echo "gpu_check.sh: $*" | tee -a "$LOG" >&2; }

rm -rf "$SITE"
mkdir -p "$SITE"
# 1a. the carried wheels the image lacks (a distribution the image has is never shadowed)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  mapfile -t NEED < <("$PY" - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, re, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    dist = whl.name.split("-")[0]
    try:
        have = md.version(dist)
    except md.PackageNotFoundError:
        try:
            have = md.version(re.sub(r"[-_.]+", "-", dist))
        except md.PackageNotFoundError:
            have = None
    print(f"{'skip' if have else 'install'}\t{whl}\t{have or ''}")
EOF
  )
  todo=()
  for line in "${NEED[@]}"; do
    IFS=$'\t' read -r what whl have <<<"$line"
    if [[ $what == install ]]; then todo+=("$whl"); else say "kept the image's $(basename "$whl" | cut -d- -f1) $have (not installing $(basename "$whl"))"; fi
  done
  if [[ ${#todo[@]} -gt 0 ]]; then
    say "installing ${#todo[@]} wheel(s) into $SITE: $(for w in "${todo[@]}"; do basename "$w"; done | tr '\n' ' ')"
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${todo[@]}" >>"$LOG" 2>&1 \
      || { say "pip install of the wheels failed (see $LOG)"; tail -20 "$LOG" >&2; exit 1; }
  fi
else
  say "no wheels in $WHEELS (bench/fetch_gpu_wheels.sh fills it); using what the image has"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

# 1b. llmkit from the working tree, without dependencies (a copy of the package files, so the
# build writes nothing into the checkout); setuptools from the wheels if the image has none
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
cp -r "$REPO/llmkit" "$REPO/pyproject.toml" "$REPO/README.md" "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
if "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$SITE" "$SRC" >>"$LOG" 2>&1; then
  say "llmkit installed from the working tree into $SITE (--no-deps)"
else
  say "pip could not build llmkit here (see $LOG); llmkit runs from the working tree through PYTHONPATH"
  export PYTHONPATH="$PYTHONPATH:$REPO"
fi
(cd "$SITE" && "$PY" -c "import llmkit, trl, datasets; print('llmkit', llmkit.__file__); print('trl', trl.__version__, 'datasets', datasets.__version__)") \
  2>&1 | tee -a "$LOG" || { say "llmkit, trl or datasets do not import (see $LOG)"; exit 1; }
"$PY" -c "import torch; print('torch', torch.__version__, torch.__file__)" 2>&1 | tee -a "$LOG"

# 2-4. the measurements
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLCONFIGDIR="$SITE/.mpl"
export LLMKIT_CACHE_DIR=${LLMKIT_CACHE_DIR:-$SITE/.llmkit-cache}
[[ $DRY == 1 ]] && export CUDA_VISIBLE_DEVICES=""
exec "$PY" bench/gpu_check.py "${ARGS[@]}"
