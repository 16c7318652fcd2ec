#!/usr/bin/env bash
# Multi-node llmkit under SLURM: one `accelerate launch` per node, ranks and the main node's
# address taken from SLURM. Submit from the repository root:
#
#   sbatch --nodes=2 --gpus-per-node=8 recipes/launch/slurm.sh RECIPE STAGE [ACCELERATE] [-- llmkit args]
#   sbatch --nodes=2 recipes/launch/slurm.sh qwen2.5-0.5b-es sft zero3 -- --learning_rate 1e-5
#   sbatch --nodes=2 recipes/launch/slurm.sh qwen2.5-0.5b-es run        # the whole pipeline.yaml
#
# STAGE is a file of the recipe without .yaml (sft, sft_full, dpo, grpo, ...) or `run`.
# ACCELERATE is a config in recipes/accelerate/ (default multi_node). DRY_RUN=1 prints the
# per-node commands instead of running them (used by the tests). tests/test_multinode.py runs it
# for real on one CPU machine with a stand-in scontrol/srun (GPUS_PER_NODE=1, cpu_multi_node).
# The run's output_dir must be on a filesystem every node sees (as transformers' Trainer assumes):
# only rank 0 writes the run directory, but each rank saves its own RNG state into every
# checkpoint (rng_state_<rank>.pth) and every rank reads the checkpoint when the run resumes.
#SBATCH --job-name=llmkit
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=runs/slurm-%x-%j.log
set -euo pipefail

RECIPE=${1:?usage: slurm.sh RECIPE STAGE [ACCELERATE] [-- llmkit args]}
STAGE=${2:?usage: slurm.sh RECIPE STAGE [ACCELERATE] [-- llmkit args]}
shift 2
ACCEL=multi_node
if [[ $# -gt 0 && $1 != "--" ]]; then ACCEL=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
EXTRA=("$@")

die() { echo "slurm.sh: error: $*" >&2; exit 2; }
[[ -d recipes/$RECIPE ]] || die "no recipe recipes/$RECIPE (run from the repository root; recipes: $(ls recipes | grep -v -e accelerate -e launch | tr '\n' ' '))"
[[ -f recipes/accelerate/$ACCEL.yaml ]] || die "no accelerate config recipes/accelerate/$ACCEL.yaml ($(ls recipes/accelerate | sed 's/.yaml//' | tr '\n' ' '))"
if [[ $STAGE == run ]]; then
  TARGET=(run "recipes/$RECIPE")
else
  [[ -f recipes/$RECIPE/$STAGE.yaml ]] || die "no stage config recipes/$RECIPE/$STAGE.yaml"
  # the command is the stage named in the YAML file's name up to the first _ (sft_full -> sft)
  TARGET=("${STAGE%%_*}" --config "recipes/$RECIPE/$STAGE.yaml")
fi
[[ -n ${SLURM_JOB_NODELIST:-} ]] || die "not inside a SLURM allocation (submit with sbatch)"

NODES=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
MAIN_NODE=$(head -n1 <<<"$NODES")
NUM_MACHINES=${SLURM_NNODES:-$(wc -l <<<"$NODES")}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}}
[[ $GPUS_PER_NODE -ge 1 ]] || die "no GPUs per node (set --gpus-per-node or GPUS_PER_NODE)"
NUM_PROCESSES=$((NUM_MACHINES * GPUS_PER_NODE))
PORT=${MAIN_PROCESS_PORT:-29500}
PY=${PYTHON:-.venv/bin/python}

# llmkit's arguments are shell-quoted (an argument with a space or a glob character such as
# `--datasets [a.jsonl]` reaches llmkit unchanged on every node); \$SLURM_PROCID is expanded on
# each node by srun's shell, not here. LAUNCH_ARGS: extra `accelerate launch` options.
printf -v LLMKIT_ARGS ' %q' "${TARGET[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
NODE_CMD="$PY -m accelerate.commands.launch --config_file recipes/accelerate/$ACCEL.yaml \
 --num_machines $NUM_MACHINES --num_processes $NUM_PROCESSES --machine_rank \$SLURM_PROCID \
 --main_process_ip $MAIN_NODE --main_process_port $PORT --rdzv_backend static ${LAUNCH_ARGS:-}\
 -m llmkit$LLMKIT_ARGS"

echo "llmkit on $NUM_MACHINES node(s) x $GPUS_PER_NODE GPU(s): main $MAIN_NODE:$PORT, accelerate $ACCEL" >&2
if [[ ${DRY_RUN:-0} == 1 ]]; then
  for ((rank = 0; rank < NUM_MACHINES; rank++)); do echo "${NODE_CMD//\$SLURM_PROCID/$rank}"; done
  exit 0
fi
export HF_HUB_ENABLE_HF_TRANSFER=${HF_HUB_ENABLE_HF_TRANSFER:-0} TOKENIZERS_PARALLELISM=false
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c "$NODE_CMD"
