"""Kill a training stage (SIGTERM, then SIGKILL) and run the same command again: it resumes
from the last checkpoint and ends where an uninterrupted run ends.

Tolerance: the final held-out loss of the resumed run equals the uninterrupted run's within
1e-4 (same seed, same data order: the Trainer restores optimizer, scheduler, RNG and data
position from the checkpoint; CPU kernels are deterministic here)."""

from __future__ import annotations

import json
import random
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
            "--model_config", json.dumps(TINY_MODEL), "--datasets", f"[{corpus}]",
            "--eval_datasets", f"[{corpus.parent / 'heldout.jsonl'}]",
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


# --------------------------------------------------------------------------- chaos: SIGKILL at a random moment

_SECONDS: dict[str, float] = {}  # how long each chaos command takes in-process, measured once per session


def _timed(key: str, run) -> float:
    if key not in _SECONDS:
        t0 = time.time()
        run()
        _SECONDS[key] = time.time() - t0
    return _SECONDS[key]


def _kill_at_random(proc: subprocess.Popen, first_write: Path, seconds: float, seed: int, of: int) -> str:
    """SIGKILL ``proc`` at a random moment of its work: once it has created ``first_write`` (the
    first staging directory: before it nothing is on disk), after up to ``seconds``, the
    in-process duration of the whole command (so the kill also lands after the end).  Seed k
    of ``of`` draws from the k-th of ``of`` equal slices of that time, so that a few seeds
    spread over the whole run."""
    wait_for(lambda: first_write.exists() or Path(str(first_write) + ".partial").exists(), proc, timeout=300)
    delay = random.Random(seed).uniform(seed / of, (seed + 1) / of) * seconds
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    return f"killed {delay:.1f}s (of {seconds:.1f}s) after {first_write.name} appeared"


def _load(run: Path, stage: str) -> None:
    """Load a finished run the way a consumer does."""
    if stage == "tokenizer":
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(run)
    else:
        from trl import ModelConfig

        from llmkit.modeling import load_causal_lm

        load_causal_lm(ModelConfig(model_name_or_path=str(run)))  # base + adapter for a LoRA run


def _complete_or_refused(run: Path, stage: str, consumer: list | None = None) -> bool:
    """What a kill leaves must be a finished, loadable run or one every consumer refuses.
    Returns whether the run is finished.  (A run killed after its manifest was written but
    before it moved into place is finished: require_run moves it in.)"""
    from llmkit.config import LlmkitError
    from llmkit.runs import read_manifest, require_run

    try:
        manifest = require_run(run, "input")
    except LlmkitError as exc:
        assert "did not finish" in str(exc) or "not found" in str(exc), exc
        assert not run.exists()
        if consumer:
            assert llmkit(*consumer) == 2  # a later stage refuses it too
        return False
    assert manifest is not None and read_manifest(run) == manifest and not Path(str(run) + ".partial").exists()
    _load(run, stage)
    return True


def _chaos_args(stage: str, out: Path, request, tmp_path: Path) -> tuple[list[str], list[str], int]:
    """(command, consumer command, steps) of a small run of ``stage`` that checkpoints often."""
    if stage == "pretrain":  # 40 steps of the tiny Llama, a checkpoint every 7
        tokenizer_run, corpus = request.getfixturevalue("tokenizer_run"), request.getfixturevalue("corpus")
        args = pretrain_args(out, tokenizer_run, corpus, steps=40)
        args[args.index("--save_steps") + 1] = "7"
        return args, ["sft", "--output_dir", tmp_path / "next", "--model_name_or_path", out, "--datasets", f"[{corpus}]"], 40
    base_model, sft_data = request.getfixturevalue("base_model"), request.getfixturevalue("sft_data")
    args = trl_stage_args(stage, out, base_model, _stage_data(stage, tmp_path, sft_data), 16)  # LoRA, a checkpoint every 4 steps
    args[args.index("--save_steps") + 1] = "4"
    if stage == "sft":
        args += ["--use_peft", "--lora_r", "8"]
    return args, ["dpo", "--output_dir", tmp_path / "next", "--model_name_or_path", out, "--datasets", f"[{sft_data[0]}]"], 16


SEEDS = {"pretrain": 5, "sft": 2, "dpo": 2, "run": 2}
CHAOS = [(stage, seed) for stage in ("pretrain", "sft", "dpo") for seed in range(SEEDS[stage])]


@pytest.mark.parametrize(("stage", "seed"), CHAOS)
def test_chaos_kill_at_a_random_moment(tmp_path, request, stage, seed):
    """SIGKILL a pretrain, LoRA SFT or DPO run at a random moment (start-up, training, a
    checkpoint, the final save, the rename): what is left is either a complete, loadable run
    or one that every consumer recognises as unfinished, and the same command then finishes it."""
    from llmkit.runs import read_manifest

    out = tmp_path / "run"
    args, consumer, steps = _chaos_args(stage, out, request, tmp_path)
    timing = tmp_path / "timing"
    seconds = _timed(stage, lambda: llmkit(*_chaos_args(stage, timing, request, tmp_path)[0]) == 0 or pytest.fail("timing run failed"))
    print(_kill_at_random(start(args, tmp_path), out, seconds, seed, SEEDS[stage]))
    print("finished" if _complete_or_refused(out, stage, consumer) else "unfinished", sorted(p.name for p in tmp_path.iterdir()))
    assert not (tmp_path / "next").exists() and not Path(str(tmp_path / "next") + ".partial").exists()
    rc = llmkit(*args) if not out.exists() else 0
    assert rc == 0 and read_manifest(out)["steps"] == steps
    _load(out, stage)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("run.")]  # no .partial, no .old-*


def _chaos_recipe(root: Path) -> tuple[Path, dict[str, Path]]:
    """tokenizer -> pretrain -> LoRA sft with tiny step counts, frequent checkpoints, temp data."""
    import yaml
    from conftest import DATA, read_jsonl, write_jsonl

    data = root / "data"
    write_jsonl(data / "corpus.jsonl", read_jsonl(DATA / "corpus_train.jsonl", 300))
    write_jsonl(data / "held.jsonl", read_jsonl(DATA / "corpus_heldout.jsonl", 40))
    write_jsonl(data / "sft.jsonl", read_jsonl(DATA / "sft_train.jsonl", 120))
    outs = {"tokenizer": root / "runs" / "tok", "pretrain": root / "runs" / "pre", "sft": root / "runs" / "sft"}
    configs = {
        "tokenizer": {"output_dir": str(outs["tokenizer"]), "datasets": [str(data / "corpus.jsonl")], "vocab_size": 500},
        "pretrain": {"output_dir": str(outs["pretrain"]), "tokenizer_name_or_path": str(outs["tokenizer"]), "model_config": TINY_MODEL,
                     "datasets": [str(data / "corpus.jsonl")], "eval_datasets": [str(data / "held.jsonl")], "block_size": 64,
                     "max_steps": 12, "save_steps": 3, "save_total_limit": 1, "logging_steps": 1, "learning_rate": 3e-3},
        "sft": {"output_dir": str(outs["sft"]), "model_name_or_path": str(outs["pretrain"]), "datasets": [str(data / "sft.jsonl")],
                "eval_split_size": 8, "max_steps": 10, "save_steps": 3, "max_length": 96, "use_peft": True, "lora_r": 8,
                "logging_steps": 1, "sample_prompts": 1, "sample_max_new_tokens": 4},
    }
    recipe = root / "recipe"
    recipe.mkdir(parents=True)
    for name, cfg in configs.items():
        (recipe / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    (recipe / "pipeline.yaml").write_text(yaml.safe_dump({"name": "chaos", "stages": list(configs)}))
    return recipe, outs


@pytest.mark.parametrize("seed", range(SEEDS["run"]))
def test_chaos_kill_llmkit_run_at_a_random_moment(tmp_path, capsys, seed):
    """SIGKILL `llmkit run` (tokenizer -> pretrain -> sft) at a random moment: every run
    directory is complete and loadable or refused as unfinished; the same `llmkit run` then
    finishes the chain, skipping the stages that had finished."""
    from llmkit.runs import read_manifest

    seconds = _timed("run", lambda: llmkit("run", _chaos_recipe(tmp_path / "timing")[0]) == 0 or pytest.fail("timing run failed"))
    recipe, outs = _chaos_recipe(tmp_path / "chaos")
    when = _kill_at_random(start(["run", str(recipe)], tmp_path), outs["tokenizer"], seconds, seed, SEEDS["run"])
    finished = {stage: read_manifest(out)["finished_at"] for stage, out in outs.items() if _complete_or_refused(out, stage)}
    with capsys.disabled():
        print(when, "finished:", list(finished), "left:", sorted(p.name for p in outs["sft"].parent.iterdir()))
    assert list(finished) == list(outs)[: len(finished)]  # stages finish in order
    capsys.readouterr()
    assert llmkit("run", recipe) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished run found") == len(finished)
    for stage, out in outs.items():
        m = read_manifest(out)
        assert m is not None and not Path(str(out) + ".partial").exists()
        if stage in finished:
            assert m["finished_at"] == finished[stage]  # skipped, not redone
    assert read_manifest(outs["sft"])["steps"] == 10
    _load(outs["sft"], "sft")
    assert sorted(p.name for p in outs["sft"].parent.iterdir()) == ["pre", "report.html", "report.md", "sft", "tok"]
