"""Correctness across processes, on CPU with two gloo processes (`accelerate launch` with
recipes/accelerate/cpu_ddp.yaml, see DEVELOPERS.md): at the same global batch, SFT and DPO follow
the same loss trajectory with 2 processes as with 1 (within LOSS_TOL), GRPO (sampled, so each
layout draws different completions) reaches statistically the same rewards; only the main process
writes the run directory; a 2-process run stopped by SIGTERM resumes to the uninterrupted loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA, REPO, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow
LOSS_TOL = 2e-3  # relative; float32 sums in a different order (per-process means, gradient all-reduce)


def _launch(n: int, stage: str, out: Path, *args, cwd: Path, wait: bool = True):
    if n == 1:
        cmd = [sys.executable, "-m", "llmkit", stage]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes/accelerate/cpu_ddp.yaml"),
               "--num_processes", str(n), "--num_cpu_threads_per_process", "1", "-m", "llmkit", stage]
    cmd += ["--output_dir", str(out), "--logging_steps", "1", "--seed", "3", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, start_new_session=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _losses(run: Path, key: str = "loss") -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r and "eval_loss" not in r and "train_loss" not in r]


def _same_trajectory(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) and len(a) >= 4
    for i, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= LOSS_TOL * max(1.0, abs(x)), f"step {i + 1}: {x} vs {y}"
    assert a[0] != a[-1]  # the model did train
    print(f"\nloss trajectories, {len(a)} steps: max relative difference "
          f"{max(abs(x - y) / max(1.0, abs(x)) for x, y in zip(a, b)):.2e}")


def _only_main_wrote(r, tmp_path: Path, stage: str) -> None:
    assert r.stdout.count(f"llmkit {stage}: done") == 1
    assert not any(p.name.endswith((".partial", ".tmp")) or ".old-" in p.name for p in tmp_path.iterdir())


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("mp") / "prefs.jsonl", read_jsonl(DATA / "preferences_train.jsonl", 96))


@pytest.fixture(scope="module")
def math(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("mp") / "math.jsonl", read_jsonl(DATA / "math_easy_train.jsonl", 64))


SFT = ["--eval_split_size", "0", "--max_steps", "5", "--max_length", "128", "--use_peft", "--lora_r", "8",
       "--learning_rate", "5e-3", "--sample_prompts", "0", "--save_steps", "1000"]


def test_sft_two_processes_follow_the_one_process_trajectory(tmp_path, base_model, sft_data):
    data = ["--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]"]
    _launch(1, "sft", tmp_path / "one", *data, *SFT, "--per_device_train_batch_size", "8", cwd=tmp_path)
    r = _launch(2, "sft", tmp_path / "two", *data, *SFT, "--per_device_train_batch_size", "4", cwd=tmp_path)
    _same_trajectory(_losses(tmp_path / "one"), _losses(tmp_path / "two"))
    _only_main_wrote(r, tmp_path, "sft")
    m1, m2 = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert m1["steps"] == m2["steps"] == 5


def test_dpo_two_processes_follow_the_one_process_trajectory(tmp_path, base_model, prefs):
    args = ["--model_name_or_path", base_model, "--datasets", f"[{prefs}]", "--eval_split_size", "0", "--max_steps", "5",
            "--max_length", "64", "--use_peft", "--lora_r", "8", "--learning_rate", "5e-3", "--save_steps", "1000"]
    _launch(1, "dpo", tmp_path / "one", *args, "--per_device_train_batch_size", "8", cwd=tmp_path)
    r = _launch(2, "dpo", tmp_path / "two", *args, "--per_device_train_batch_size", "4", cwd=tmp_path)
    _same_trajectory(_losses(tmp_path / "one"), _losses(tmp_path / "two"))
    _only_main_wrote(r, tmp_path, "dpo")


def test_grpo_two_processes_see_the_same_global_batch(tmp_path, peaked_policy, math):
    """Completions are sampled per process, so trajectories differ draw by draw; what must hold:
    the same prompts and number of completions per step, and rewards from the same distribution."""
    args = ["--model_name_or_path", peaked_policy, "--datasets", f"[{math}]", "--eval_split_size", "0", "--max_steps", "4",
            "--use_peft", "--lora_r", "8", "--num_generations", "4", "--max_completion_length", "8",
            "--reward_funcs", "[format, length]", "--learning_rate", "1e-3", "--save_steps", "1000", "--eval_max_new_tokens", "4"]
    _launch(1, "grpo", tmp_path / "one", *args, "--per_device_train_batch_size", "8", cwd=tmp_path)
    r = _launch(2, "grpo", tmp_path / "two", *args, "--per_device_train_batch_size", "4", cwd=tmp_path)
    _only_main_wrote(r, tmp_path, "grpo")
    rows = {d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two")}
    steps = {d: [x for x in rows[d] if "reward" in x] for d in rows}
    assert len(steps["one"]) == len(steps["two"]) == 4
    for a, b in zip(steps["one"], steps["two"]):
        assert a["epoch"] == pytest.approx(b["epoch"])  # same number of prompts consumed per step
        assert a["num_tokens"] == pytest.approx(b["num_tokens"], rel=0.5)
    mean = {d: sum(x["reward"] for x in steps[d]) / 4 for d in steps}
    assert abs(mean["one"] - mean["two"]) < 0.25 * max(1.0, abs(mean["one"]))


def test_two_process_sft_resumes_after_sigterm(tmp_path, base_model, sft_data):
    data = ["--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]", "--per_device_train_batch_size", "4"]
    args = [*data, "--eval_split_size", "0", "--max_steps", "8", "--max_length", "128", "--use_peft", "--lora_r", "8",
            "--learning_rate", "5e-3", "--sample_prompts", "0", "--save_steps", "2"]
    _launch(2, "sft", tmp_path / "whole", *args, cwd=tmp_path)
    out = tmp_path / "cut"
    proc = _launch(2, "sft", out, *args, cwd=tmp_path, wait=False)
    staging = out.with_name("cut.partial")
    deadline = time.monotonic() + 600
    while not (staging / "checkpoints" / "checkpoint-2").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()[-2000:]
    os.killpg(proc.pid, signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and not out.exists() and staging.exists(), log[-2000:]
    r = _launch(2, "sft", out, *args, cwd=tmp_path)
    assert "resuming from" in r.stdout + r.stderr
    whole, cut = _losses(tmp_path / "whole"), _losses(out)
    assert abs(whole[-1] - cut[-1]) < 1e-4 * max(1.0, abs(whole[-1]))
    assert json.loads((out / "manifest.json").read_text())["steps"] == 8


def test_fsdp2_full_sft_on_cpu_matches_one_process(tmp_path, base_model, sft_data):
    """torch 2.13 shards over gloo on CPU: FSDP v2 (recipes/accelerate/cpu_fsdp.yaml) trains the
    full model with the same trajectory as one process and saves a normal, loadable model."""
    from transformers import AutoModelForCausalLM

    args = ["--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]", "--eval_split_size", "0",
            "--max_steps", "4", "--max_length", "128", "--learning_rate", "1e-3", "--sample_prompts", "0",
            "--save_steps", "1000", "--logging_steps", "1", "--seed", "3"]
    r1 = subprocess.run([sys.executable, "-m", "llmkit", "sft", "--output_dir", str(tmp_path / "one"), *map(str, args),
                         "--per_device_train_batch_size", "8"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr[-2000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes/accelerate/cpu_fsdp.yaml"),
           "--num_processes", "2", "--num_cpu_threads_per_process", "1", "-m", "llmkit", "sft",
           "--output_dir", str(tmp_path / "fsdp"), *map(str, args), "--per_device_train_batch_size", "4"]
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    _same_trajectory(_losses(tmp_path / "one"), _losses(tmp_path / "fsdp"))
    _only_main_wrote(r2, tmp_path, "sft")
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp")
    assert max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters())) < 1e-3
