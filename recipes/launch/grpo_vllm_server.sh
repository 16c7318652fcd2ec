#!/usr/bin/env bash
# GRPO with a separate vLLM generation server (TRL's vllm_mode=server) on its own GPUs, beside
# the training GPUs, on one node:
#
#   recipes/launch/grpo_vllm_server.sh RECIPE [VLLM_GPUS] [TRAIN_GPUS] [-- llmkit args]
#   recipes/launch/grpo_vllm_server.sh qwen2.5-0.5b-es 7 0,1,2,3,4,5,6
#
# Starts `trl vllm-serve` on VLLM_GPUS (tensor parallel over them) with the recipe's policy (a
# LoRA SFT run is merged first, as the server needs full weights), waits until it answers, then
# runs `llmkit grpo` under accelerate on TRAIN_GPUS with use_vllm/vllm_mode=server pointed at it.
# TRL sends the updated weights to the server after each step. The server is stopped on exit.
# DRY_RUN=1 prints the two commands (used by the tests).
set -euo pipefail

RECIPE=${1:?usage: grpo_vllm_server.sh RECIPE [VLLM_GPUS] [TRAIN_GPUS] [-- llmkit args]}
shift
VLLM_GPUS=7; TRAIN_GPUS=0,1,2,3,4,5,6
if [[ $# -gt 0 && $1 != "--" ]]; then VLLM_GPUS=$1; shift; fi
if [[ $# -gt 0 && $1 != "--" ]]; then TRAIN_GPUS=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
EXTRA=("$@")
PY=${PYTHON:-.venv/bin/python}
PORT=${VLLM_PORT:-8001}
ACCEL=${ACCELERATE:-multi_gpu}

die() { echo "grpo_vllm_server.sh: error: $*" >&2; exit 2; }
CONFIG=recipes/$RECIPE/grpo.yaml
[[ -f $CONFIG ]] || die "no $CONFIG (run from the repository root)"
[[ -f recipes/accelerate/$ACCEL.yaml ]] || die "no accelerate config recipes/accelerate/$ACCEL.yaml"
IFS=, read -ra VG <<<"$VLLM_GPUS"; IFS=, read -ra TG <<<"$TRAIN_GPUS"
for g in "${VG[@]}"; do [[ ,$TRAIN_GPUS, == *,$g,* ]] && die "GPU $g is in both VLLM_GPUS and TRAIN_GPUS"; done

# the policy the server must hold: the recipe's model_name_or_path, merged if it is a LoRA run
MODEL=$($PY - "$CONFIG" <<'PYEOF'
import sys
from llmkit.config import read_yaml
from llmkit.modeling import is_adapter_dir
m = read_yaml(sys.argv[1]).get("model_name_or_path")
if not m:
    sys.exit("grpo.yaml has no model_name_or_path")
if is_adapter_dir(m):
    import contextlib
    from llmkit.serving import merged_copy
    with contextlib.redirect_stdout(sys.stderr):  # only the path goes to stdout
        m = merged_copy(m)
print(m)
PYEOF
)

SERVE=(env CUDA_VISIBLE_DEVICES="$VLLM_GPUS" "$PY" -m trl.scripts.vllm_serve --model "$MODEL"
       --tensor_parallel_size "${#VG[@]}" --host 127.0.0.1 --port "$PORT")
TRAIN=(env CUDA_VISIBLE_DEVICES="$TRAIN_GPUS" "$PY" -m accelerate.commands.launch
       --config_file "recipes/accelerate/$ACCEL.yaml" --num_processes "${#TG[@]}"
       -m llmkit grpo --config "$CONFIG" --use_vllm true --vllm_mode server
       --vllm_server_host 127.0.0.1 --vllm_server_port "$PORT" "${EXTRA[@]}")
if [[ ${DRY_RUN:-0} == 1 ]]; then
  echo "${SERVE[*]}"; echo "${TRAIN[*]}"; exit 0
fi

mkdir -p runs
"${SERVE[@]}" > "runs/vllm-serve-$PORT.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM
echo "waiting for trl vllm-serve on GPUs $VLLM_GPUS (log: runs/vllm-serve-$PORT.log) ..." >&2
for _ in $(seq 1 600); do
  kill -0 $SERVER 2>/dev/null || die "the vLLM server exited; see runs/vllm-serve-$PORT.log"
  curl -sf "http://127.0.0.1:$PORT/health/" >/dev/null && break
  sleep 1
done
"${TRAIN[@]}"
