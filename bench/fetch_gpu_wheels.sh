#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the small wheels bench/gpu_check.sh installs on a lent GPU machine,
# whose Python has torch, transformers, peft, accelerate, pyarrow, pandas and xxhash but not trl,
# datasets or liger-kernel, and which cannot download anything:
#
#   bench/fetch_gpu_wheels.sh            # here, with PyPI reachable
#   du -sh .whl                          # must fit, with the working tree, in the 64 MiB a run carries
#
# Versions are this checkout's (.venv), so the GPU machine runs what the tests ran; liger-kernel
# (not installable on a CPU machine) is pinned below. Wheels only (--only-binary), no dependency
# resolution (--no-deps): the list below is the dependency closure that the GPU image lacks.
# bitsandbytes and vLLM are too big to carry (QLoRA and vLLM generation are skipped there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=${WHEEL_DIR:-.whl}
PYVER=${GPU_PYTHON_VERSION:-3.12}
PLATFORM=${GPU_PLATFORM:-manylinux_2_28_x86_64}
# pip takes the named platform tags only: add the older manylinux tags a glibc-2.28 machine also runs
PLATFORMS=(--platform "$PLATFORM")
[[ $PLATFORM == manylinux_2_28_x86_64 ]] && PLATFORMS+=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
LIGER_VERSION=${LIGER_VERSION:-0.8.5}

# trl, datasets and what they need beyond the image; matplotlib (llmkit's loss.png) and rich
# (llmkit's tables) with theirs; setuptools to build llmkit from the tree without an index.
PACKAGES=(trl datasets dill multiprocess matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing
          rich markdown-it-py mdurl pygments setuptools)

version_here() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null; }

specs=("liger-kernel==$LIGER_VERSION")
for p in "${PACKAGES[@]}"; do
  v=$(version_here "$p") || { echo "fetch_gpu_wheels.sh: $p is not installed in $PY's environment (run make setup)" >&2; exit 2; }
  specs+=("$p==$v")
done
mkdir -p "$DEST"
echo "fetching ${#specs[@]} wheels for Python $PYVER / $PLATFORM into $DEST/: ${specs[*]}" >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" "${PLATFORMS[@]}" \
  -d "$DEST" "${specs[@]}"
ls -1 "$DEST"
du -sh "$DEST"
