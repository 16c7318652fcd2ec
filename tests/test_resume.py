"""Kill a training stage (SIGTERM, then SIGKILL) and run the same command again: it resumes
from the last checkpoint and ends where an uninterrupted run ends.

Tolerance: the final held-out loss of the resumed run equals the uninterrupted run's within
1e-4 (same seed, same data order: the Trainer restores optimizer, scheduler, RNG and data
position from the checkpoint; CPU kernels are deterministic here)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_MODEL, llmkit

TOL = 1e-4


def pretrain_args(out: Path, tokenizer_run: Path, corpus: Path, steps: int = 120) -> list[str]:
    return ["pretrain", "--output_dir", str(out), "--tokenizer_name_or_path", str(tokenizer_run),
            "--model_config", json.dumps(TINY_MODEL), "--datasets", f"[{corpus}]", "--eval_datasets", f"[{corpus.parent / 'heldout.jsonl'}]",
            "--block_size", "64", "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--learning_rate", "3e-3",
            "--logging_steps", "1", "--eval_steps", "1000", "--save_steps", "10", "--save_total_limit", "2"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmkit", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, "the run ended before it could be interrupted:\n" + proc.stdout.read()[-2000:]
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.05)


def checkpoints(out: Path) -> list[Path]:
    d = Path(str(out) + ".partial") / "checkpoints"
    return sorted(d.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if d.is_dir() else []


def final_eval_loss(out: Path) -> float:
    return json.loads((out / "manifest.json").read_text())["metrics"]["eval_loss"]


def test_sigterm_saves_a_checkpoint_and_the_rerun_matches(tmp_path, tokenizer_run, corpus):
    ref = tmp_path / "ref"
    assert llmkit(*pretrain_args(ref, tokenizer_run, corpus)) == 0

    out = tmp_path / "run"
    metrics = Path(str(out) + ".partial") / "metrics.jsonl"
    proc = start(pretrain_args(out, tokenizer_run, corpus), tmp_path)
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 13, proc)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, text[-2000:]
    assert "Run the same command again to resume" in text
    saved = checkpoints(out)
    assert saved and not out.exists()  # the run stays unfinished; its newest checkpoint is the SIGTERM one
    step = int(saved[-1].name.split("-")[1])
    assert step >= 13  # the step during which the signal arrived

    assert llmkit(*pretrain_args(out, tokenizer_run, corpus)) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["steps"] == 120
    assert abs(final_eval_loss(out) - final_eval_loss(ref)) < TOL


def test_sigkill_loses_at_most_the_work_since_the_last_checkpoint(tmp_path, tokenizer_run, corpus, capsys):
    ref = tmp_path / "ref"
    assert llmkit(*pretrain_args(ref, tokenizer_run, corpus)) == 0

    out = tmp_path / "run"
    proc = start(pretrain_args(out, tokenizer_run, corpus), tmp_path)
    wait_for(lambda: any((c / "trainer_state.json").is_file() and c.name == "checkpoint-20" for c in checkpoints(out)), proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists() and checkpoints(out)
    # a later stage refuses the unfinished run
    capsys.readouterr()
    assert llmkit("sft", "--output_dir", tmp_path / "sft", "--model_name_or_path", out, "--datasets", f"[{corpus}]") == 2
    assert "did not finish" in capsys.readouterr().err

    capsys.readouterr()
    assert llmkit(*pretrain_args(out, tokenizer_run, corpus)) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["steps"] == 120
    assert abs(final_eval_loss(out) - final_eval_loss(ref)) < TOL


def _loss_at(run: Path, step: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("step") == step and "loss" in r][-1]


def trl_stage_args(stage: str, out: Path, base_model: Path, data: Path, steps: int) -> list[str]:
    common = ["--output_dir", str(out), "--model_name_or_path", str(base_model), "--datasets", f"[{data}]", "--eval_split_size", "0",
              "--max_steps", str(steps), "--logging_steps", "1", "--save_steps", "1000", "--learning_rate", "1e-3", "--seed", "7"]
    per_stage = {
        "sft": ["--per_device_train_batch_size", "4", "--max_length", "96", "--sample_prompts", "0"],
        "dpo": ["--per_device_train_batch_size", "4", "--max_length", "96", "--use_peft", "--lora_r", "8"],
        "grpo": ["--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "6",
                 "--reward_funcs", "[format, spanish]", "--beta", "0.04", "--use_peft", "--lora_r", "8"],
    }
    return [stage, *common, *per_stage[stage]]


def _stage_data(stage: str, tmp_path: Path, sft_data) -> Path:
    from conftest import DATA, read_jsonl, write_jsonl

    if stage == "sft":
        return sft_data[0]
    if stage == "dpo":
        return write_jsonl(tmp_path / "prefs.jsonl", read_jsonl(DATA / "preferences_train.jsonl", 200))
    return write_jsonl(tmp_path / "math.jsonl", read_jsonl(DATA / "math_easy_train.jsonl", 200))


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_trl_stages_resume_after_sigterm(tmp_path, base_model, sft_data, stage):
    """SFT, DPO and GRPO (TRL trainers): stopped by SIGTERM mid-run, the same command resumes
    and the loss logged at the last step equals an uninterrupted run's within 1e-4."""
    steps = 24
    data = _stage_data(stage, tmp_path, sft_data)
    ref = tmp_path / "ref"
    assert llmkit(*trl_stage_args(stage, ref, base_model, data, steps)) == 0

    out = tmp_path / "run"
    metrics = Path(str(out) + ".partial") / "metrics.jsonl"
    proc = start(trl_stage_args(stage, out, base_model, data, steps), tmp_path)
    wait_for(lambda: metrics.is_file() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= 8, proc)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, text[-2000:]
    assert checkpoints(out) and not out.exists()

    assert llmkit(*trl_stage_args(stage, out, base_model, data, steps)) == 0
    assert json.loads((out / "manifest.json").read_text())["steps"] == steps
    assert abs(_loss_at(out, steps) - _loss_at(ref, steps)) < TOL


@pytest.mark.parametrize("seed", range(5))
def test_chaos_kill_at_a_random_moment(tmp_path, tokenizer_run, corpus, seed):
    """SIGKILL a pretrain run at a random moment (start-up, training, a checkpoint, the final
    save, the rename): what is left is either a complete, loadable run or one that every
    consumer recognises as unfinished, and the same command then finishes it."""
    import random

    from transformers import AutoModelForCausalLM

    from llmkit.runs import read_manifest

    args = pretrain_args(tmp_path / "run", tokenizer_run, corpus, steps=40)
    args[args.index("--save_steps") + 1] = "7"
    t0 = time.time()
    assert llmkit(*pretrain_args(tmp_path / "timing", tokenizer_run, corpus, steps=40)) == 0
    total = time.time() - t0 + 4.0  # + interpreter start-up of the subprocess
    out = tmp_path / "run"
    proc = start(args, tmp_path)
    time.sleep(random.Random(seed).uniform(0.5, total))
    proc.kill()
    proc.communicate(timeout=60)
    partial = Path(str(out) + ".partial")
    if out.exists():  # finished before the kill: must be complete and loadable
        assert read_manifest(out) is not None and not partial.exists()
        AutoModelForCausalLM.from_pretrained(out)
    else:  # never mistaken for a finished run
        assert llmkit("sft", "--output_dir", tmp_path / "next", "--model_name_or_path", out, "--datasets", f"[{corpus}]") == 2
    assert not (tmp_path / "next").exists()
    rc = llmkit(*args) if not out.exists() else 0
    assert rc == 0 and read_manifest(out)["steps"] == 40
    AutoModelForCausalLM.from_pretrained(out)
