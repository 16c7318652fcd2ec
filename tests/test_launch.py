"""The launchers in recipes/launch/, checked on this CPU machine in DRY_RUN mode (they print
the commands each node would run): SLURM ranks, node list and accelerate config resolution; the
GRPO + separate vLLM server wiring; their refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SLURM = REPO / "recipes/launch/slurm.sh"
GRPO = REPO / "recipes/launch/grpo_vllm_server.sh"


def _run(script: Path, *args, cwd: Path = REPO, env: dict | None = None):
    e = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=120)


@pytest.fixture()
def slurm_env(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    fake = bin_ / "scontrol"  # `scontrol show hostnames gpu[07-09]` -> one host per line
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu07\\ngpu08\\ngpu09\\n"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_NNODES": "3",
            "SLURM_GPUS_ON_NODE": "4"}


def test_slurm_one_launch_per_node_with_ranks_and_main_address(slurm_env):
    r = _run(SLURM, "qwen2.5-0.5b-es", "sft_full", "zero3", "--", "--learning_rate", "1e-5", env=slurm_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    for rank, line in enumerate(lines):
        assert f"--machine_rank {rank} " in line
        assert "--num_machines 3" in line and "--num_processes 12" in line
        assert "--main_process_ip gpu07" in line and "--config_file recipes/accelerate/zero3.yaml" in line
        assert line.endswith("-m llmkit sft --config recipes/qwen2.5-0.5b-es/sft_full.yaml --learning_rate 1e-5")
    r = _run(SLURM, "tiny-es", "run", env=slurm_env)
    assert r.returncode == 0 and "multi_node.yaml" in r.stdout and "-m llmkit run recipes/tiny-es" in r.stdout


def test_slurm_refusals(slurm_env):
    r = _run(SLURM, "no-such-recipe", "sft", env=slurm_env)
    assert r.returncode == 2 and "no recipe recipes/no-such-recipe" in r.stderr and "tiny-es" in r.stderr
    r = _run(SLURM, "tiny-es", "sft", "zero9", env=slurm_env)
    assert r.returncode == 2 and "zero9" in r.stderr and "zero3" in r.stderr
    r = _run(SLURM, "tiny-es", "sft_nope", env=slurm_env)
    assert r.returncode == 2 and "sft_nope.yaml" in r.stderr
    env = {k: v for k, v in slurm_env.items() if k != "SLURM_JOB_NODELIST"}
    r = subprocess.run(["bash", str(SLURM), "tiny-es", "sft"], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={k: v for k, v in {**os.environ, **env, "DRY_RUN": "1"}.items() if k != "SLURM_JOB_NODELIST"})
    assert r.returncode == 2 and "not inside a SLURM allocation" in r.stderr


def test_grpo_with_a_separate_vllm_server(tmp_path, base_model):
    recipe = tmp_path / "recipes" / "r"
    recipe.mkdir(parents=True)
    shutil.copytree(REPO / "recipes/accelerate", tmp_path / "recipes/accelerate")
    (recipe / "grpo.yaml").write_text(f"model_name_or_path: {base_model}\noutput_dir: runs/r/grpo\n")
    r = _run(GRPO, "r", "6,7", "0,1,2,3", "--", "--max_steps", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    serve, train = r.stdout.strip().splitlines()
    assert serve.startswith("env CUDA_VISIBLE_DEVICES=6,7 ") and f"--model {base_model}" in serve
    assert "--tensor_parallel_size 2" in serve and "--port 8001" in serve
    assert train.startswith("env CUDA_VISIBLE_DEVICES=0,1,2,3 ") and "--num_processes 4" in train
    assert "--use_vllm true --vllm_mode server --vllm_server_host 127.0.0.1 --vllm_server_port 8001" in train
    assert train.endswith("--config recipes/r/grpo.yaml --use_vllm true --vllm_mode server --vllm_server_host 127.0.0.1 "
                          "--vllm_server_port 8001 --max_steps 5")
    r = _run(GRPO, "r", "3", "0,1,2,3", cwd=tmp_path)
    assert r.returncode == 2 and "GPU 3 is in both" in r.stderr
    r = _run(GRPO, "missing", cwd=tmp_path)
    assert r.returncode == 2 and "recipes/missing/grpo.yaml" in r.stderr


def test_grpo_server_gets_the_merged_policy_of_a_lora_run(tmp_path, lora_runs):
    recipe = tmp_path / "recipes" / "r"
    recipe.mkdir(parents=True)
    shutil.copytree(REPO / "recipes/accelerate", tmp_path / "recipes/accelerate")
    (recipe / "grpo.yaml").write_text(f"model_name_or_path: {lora_runs['sft']}\n")
    r = _run(GRPO, "r", cwd=tmp_path, env={"LLMKIT_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    model = r.stdout.split("--model ")[1].split()[0]
    assert model.startswith(str(tmp_path / "cache" / "merged"))
    assert (Path(model) / "model.safetensors").is_file() and not (Path(model) / "adapter_config.json").exists()


@pytest.mark.parametrize(("gpu", "extra", "config"), [("", [], "cpu_ddp"), ("1", [], "multi_gpu"),
                                                     ("", ["NUM_MACHINES=2"], "cpu_multi_node"), ("1", ["NUM_MACHINES=2"], "multi_node")])
def test_make_with_several_processes_and_no_accelerate_uses_the_device_default(gpu, extra, config):
    """`make sft NUM_PROCESSES=2` without ACCELERATE= launches several processes (it used to run one, silently)."""
    r = subprocess.run(["make", "-n", "sft", "NUM_PROCESSES=2", f"GPU={gpu}", *extra], capture_output=True, text=True, cwd=REPO)
    line = next(x for x in r.stdout.splitlines() if " sft --config " in x)
    assert f"accelerate launch --config_file recipes/accelerate/{config}.yaml --num_processes 2" in line
    assert (REPO / "recipes/accelerate" / f"{config}.yaml").is_file()
    one = subprocess.run(["make", "-n", "sft", f"GPU={gpu}"], capture_output=True, text=True, cwd=REPO)
    assert any(x.endswith("llmkit sft --config recipes/tiny-es/sft.yaml ") or x.endswith("llmkit sft --config recipes/tiny-es/sft.yaml")
               for x in one.stdout.splitlines() if "accelerate" not in x)
