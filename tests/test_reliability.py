"""Reliability of run directories beyond resume (tests/test_resume.py):

* free disk space is checked before a training stage writes anything;
* checkpoint retention (save_total_limit) keeps the newest checkpoints, and a half-written
  checkpoint is never resumed from nor kept in place of the newest complete one;
* an `--overwrite` killed between its two renames is finished or undone on the next start;
* config paths that make a library write files cannot point outside the output directory;
* hardware and optional packages (fp16/bf16 on CPU, bitsandbytes, vLLM) are checked up front.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import DATA, TINY_MODEL, llmkit, read_jsonl, write_jsonl

from llmkit import runs
from llmkit.config import LlmkitError, StageConfig
from llmkit.stages import checkpoints, devices, disk

ERROR = "llmkit: error:"


def partial(p: Path) -> Path:
    return p.with_name(p.name + ".partial")


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(ERROR)]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def pretrain_argv(out: Path, tokenizer_run: Path, corpus: Path, steps: int = 4, *extra) -> list:
    return ["pretrain", "--output_dir", out, "--tokenizer_name_or_path", tokenizer_run, "--model_config", json.dumps(TINY_MODEL),
            "--datasets", f"[{corpus}]", "--eval_datasets", f"[{corpus.parent / 'heldout.jsonl'}]", "--block_size", "64",
            "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1",
            "--eval_steps", "1000", *extra]


def stage_hash(stage: str, argv: list) -> str:
    """The config hash a stage command line gets (what its staging mark records)."""
    from llmkit.cli import load_config_for

    return load_config_for(stage, None, [str(a) for a in argv[1:]])[1].hash()


# --------------------------------------------------------------------------- 1. free disk space


def test_disk_budget_counts_checkpoints_optimizer_and_final_model():
    gb = 10**9
    args = SimpleNamespace(save_strategy="steps", save_total_limit=2, max_steps=100, save_steps=10, save_only_model=False)
    need, kept, per = disk.disk_budget(args, weights=gb, trainable=gb // 4, final=gb)
    assert kept == 2 and per == gb + 8 * (gb // 4) + disk.SAVE_OVERHEAD  # weights + AdamW's two float32 per trainable parameter
    assert need == int(3 * per * 1.1)  # 2 kept + 1 being written before the oldest is deleted
    one = SimpleNamespace(**{**vars(args), "save_total_limit": 1})
    assert disk.disk_budget(one, gb, gb // 4, gb)[0] == int(2 * per * 1.1)
    no_optimizer = SimpleNamespace(**{**vars(args), "save_only_model": True})
    assert disk.disk_budget(no_optimizer, gb, gb // 4, gb)[2] == gb + disk.SAVE_OVERHEAD
    no_saves = SimpleNamespace(**{**vars(args), "save_strategy": "no"})
    assert disk.disk_budget(no_saves, gb, gb // 4, 3 * gb)[:2] == (int((3 * gb + disk.SAVE_OVERHEAD) * 1.1), 0)
    unlimited = SimpleNamespace(**{**vars(args), "save_total_limit": None})
    assert disk.disk_budget(unlimited, gb, gb // 4, gb)[1] == 10  # max_steps / save_steps checkpoints stay
    # a final model larger than a checkpoint (reward LoRA saves the merged model) can set the peak
    peak = 2 * (1000 + 80 + disk.SAVE_OVERHEAD) + 100 * gb + disk.SAVE_OVERHEAD
    assert disk.disk_budget(args, 1000, 10, 100 * gb)[0] == int(peak * 1.1)


def test_model_footprint_lora_counts_the_adapter_only():
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = {k: v for k, v in TINY_MODEL.items() if k != "model_type"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", vocab_size=600, **spec))
    n = sum(p.numel() for p in model.parameters())
    assert disk.model_footprint(model) == (4 * n, n, 4 * n)  # full: every float32 weight, all trainable
    lora = LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")
    applied = get_peft_model(copy.deepcopy(model), copy.deepcopy(lora))
    adapter = sum(p.numel() for p in applied.parameters() if p.requires_grad)
    assert 0 < adapter < n // 5
    assert disk.model_footprint(model, lora) == (4 * adapter, adapter, 4 * n)  # counted without touching the model
    assert not hasattr(model, "peft_config")
    assert disk.model_footprint(applied)[:2] == (4 * adapter, adapter)  # a PEFT model saves its adapter


def test_training_stage_refuses_when_the_disk_is_short_and_writes_nothing(tmp_path, tokenizer_run, corpus, capsys, monkeypatch):
    out = tmp_path / "runs" / "pre"
    asked = []
    monkeypatch.setattr(disk, "free_disk_bytes", lambda p: asked.append(Path(p)) or 10 * 2**20)
    assert llmkit(*pretrain_argv(out, tokenizer_run, corpus, 4, "--save_total_limit", "3")) == 2
    line = error_line(capsys)
    for needle in ("not enough free disk space", "10.5 MB are free", "save_total_limit", "another disk", "3 checkpoints"):
        assert needle in line, line
    assert asked == [partial(out)]
    assert not out.exists() and not partial(out).exists() and not out.parent.exists()

    monkeypatch.setattr(disk, "free_disk_bytes", lambda p: 10**12)
    assert llmkit(*pretrain_argv(out, tokenizer_run, corpus, 4, "--save_total_limit", "3")) == 0
    assert runs.read_manifest(out)["steps"] == 4


def test_disk_estimate_covers_what_a_run_writes(tmp_path, tokenizer_run, corpus, monkeypatch):
    """Without the fixed per-save allowance, the estimate is still at least what a finished run
    holds (its kept checkpoints with optimizer state + the model), and not wildly more."""
    monkeypatch.setattr(disk, "SAVE_OVERHEAD", 0)
    seen = []
    real = disk.check_disk_space

    def spy(targs, cfg, staging, weights, trainable, final, extra=0):
        seen.append(disk.disk_budget(targs, weights, trainable, final)[0])
        return real(targs, cfg, staging, weights, trainable, final, extra)

    monkeypatch.setattr(disk, "check_disk_space", spy)
    out = tmp_path / "pre"
    assert llmkit(*pretrain_argv(out, tokenizer_run, corpus, 6, "--save_steps", "2", "--save_total_limit", "2")) == 0
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert len(seen) == 1 and written <= seen[0] < 3 * written
    assert len(list((out / "checkpoints").glob("checkpoint-*"))) == 2


def test_skip_disk_check_env(tmp_path, monkeypatch):
    args = SimpleNamespace(save_strategy="steps", save_total_limit=2, max_steps=10, save_steps=5, save_only_model=False)
    cfg = StageConfig(args=[], explicit={}, source="x.yaml")
    monkeypatch.setattr(disk, "free_disk_bytes", lambda p: 0)
    with pytest.raises(LlmkitError, match="x.yaml: not enough free disk space"):
        disk.check_disk_space(args, cfg, tmp_path / "out.partial", 1000, 10, 1000)
    monkeypatch.setenv(disk.SKIP_DISK_CHECK, "1")
    disk.check_disk_space(args, cfg, tmp_path / "out.partial", 1000, 10, 1000)


# --------------------------------------------------------------------------- 2. checkpoints and retention


def fake_checkpoint(d: Path, step: int, state: str | None = "ok", weights: str | None = "model.safetensors") -> Path:
    ckpt = d / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "training_args.bin").write_bytes(b"x")  # a .bin that is not weights
    if weights:
        (ckpt / weights).mkdir() if "*" in weights or weights.startswith("global_step") else (ckpt / weights).write_bytes(b"w")
    if state == "ok":
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state is not None:
        (ckpt / "trainer_state.json").write_text(state)
    return ckpt


def test_checkpoint_completeness_and_retention(tmp_path):
    d = tmp_path / "checkpoints"
    fake_checkpoint(d, 2)
    fake_checkpoint(d, 4, weights="adapter_model.safetensors")
    fake_checkpoint(d, 6, weights="global_step6")  # DeepSpeed layout
    fake_checkpoint(d, 8, state=None)  # killed before trainer_state.json
    fake_checkpoint(d, 10, state='{"global_step": 10, "log_hist')  # killed while writing it
    fake_checkpoint(d, 12, weights=None)  # weights gone (retention killed half way)
    fake_checkpoint(d, 14, state=json.dumps({"global_step": 3}))  # not this step's state
    assert [checkpoints.checkpoint_complete(d / f"checkpoint-{s}") for s in (2, 4, 6, 8, 10, 12, 14)] == [True] * 3 + [False] * 4
    assert checkpoints.last_checkpoint(d) == str(d / "checkpoint-6")
    checkpoints.rotate_checkpoints(d, 1)  # only complete checkpoints count: the newest complete one stays
    assert sorted(p.name for p in d.iterdir()) == [f"checkpoint-{s}" for s in (10, 12, 14, 6, 8)]
    checkpoints.discard_incomplete_checkpoints(d)
    assert [p.name for p in d.iterdir()] == ["checkpoint-6"]
    assert checkpoints.last_checkpoint(tmp_path / "none") is None


def test_retention_keeps_the_newest_and_resume_ignores_incomplete_checkpoints(tmp_path, tokenizer_run, corpus, capsys):
    """save_total_limit=2 keeps the two newest checkpoints.  A run killed while saving (a newer
    checkpoint without trainer_state.json, one with a cut-off one, one without weights) resumes
    from the newest complete checkpoint, drops the broken ones, and ends like an uninterrupted run."""
    ref = tmp_path / "ref"
    extra = ("--save_steps", "3", "--save_total_limit", "2")
    assert llmkit(*pretrain_argv(ref, tokenizer_run, corpus, 12, *extra)) == 0
    assert sorted(p.name for p in (ref / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-9"]

    out = tmp_path / "run"
    argv = pretrain_argv(out, tokenizer_run, corpus, 12, *extra)
    staging = partial(out)
    shutil.copytree(ref, staging)  # the same run, killed while writing checkpoint-12
    (staging / "manifest.json").unlink()
    (staging / runs.STAGING_MARK).write_text(json.dumps({"stage": "pretrain", "config_hash": stage_hash("pretrain", argv)}))
    ck = staging / "checkpoints"
    (ck / "checkpoint-12" / "trainer_state.json").unlink()
    shutil.copytree(ck / "checkpoint-9", ck / "checkpoint-11")
    (ck / "checkpoint-11" / "model.safetensors").unlink()
    shutil.copytree(ck / "checkpoint-9", ck / "checkpoint-10")
    (ck / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 10, "best_met')
    capsys.readouterr()
    assert llmkit(*argv) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {ck / 'checkpoint-9'}" in printed
    assert printed.count("removing the incomplete checkpoint") == 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-9"]
    assert all(checkpoints.checkpoint_complete(p) for p in (out / "checkpoints").iterdir())
    m = runs.read_manifest(out)
    assert m["steps"] == 12
    assert abs(m["metrics"]["eval_loss"] - runs.read_manifest(ref)["metrics"]["eval_loss"]) < 1e-4
    steps = [r["step"] for r in runs.read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 13))  # what was logged after checkpoint-9 was dropped, then logged again


def test_ppo_retention_never_deletes_the_newest_complete_checkpoint(tmp_path, base_model):
    """PPO rotates its own checkpoints: with save_total_limit=1 and stale incomplete checkpoints
    (one with a higher step) in the staging dir, the newest complete checkpoint survives."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Pregunta {i}: ¿qué es un número?"} for i in range(16)])
    out = tmp_path / "ppo"
    argv = ["ppo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{prompts}]", "--eval_split_size", "0",
            "--reward_funcs", "[spanish]", "--response_length", "4", "--per_device_train_batch_size", "2", "--num_ppo_epochs", "1",
            "--max_steps", "7", "--save_steps", "2", "--save_total_limit", "1", "--sample_prompts", "0"]
    ck = partial(out) / "checkpoints"
    fake_checkpoint(ck, 100, state=None)  # killed while saving, in an earlier life of this run
    fake_checkpoint(ck, 4, state='{"global_step": 4, "kl')
    (partial(out) / runs.STAGING_MARK).write_text(json.dumps({"stage": "ppo", "config_hash": stage_hash("ppo", argv)}))
    assert llmkit(*argv) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-6"]
    assert checkpoints.checkpoint_complete(out / "checkpoints" / "checkpoint-6")


# --------------------------------------------------------------------------- 3. --overwrite killed between the renames


def fake_run(d: Path, tag: str, staging_mark: bool = False) -> Path:
    d.mkdir(parents=True)
    (d / "weights.bin").write_text(tag)
    (d / "manifest.json").write_text(json.dumps({"stage": "pretrain", "status": "complete", "config_hash": tag, "finished_at": tag}))
    if staging_mark:
        (d / runs.STAGING_MARK).write_text(json.dumps({"stage": "pretrain", "config_hash": tag}))
    return d


def tag(d: Path) -> str:
    return (d / "weights.bin").read_text()


def test_recover_after_the_new_run_moved_in(tmp_path):
    out = fake_run(tmp_path / "pre", "new", staging_mark=True)  # killed before the mark was removed and the old run deleted
    fake_run(tmp_path / "pre.old-1700000000000000000", "old")
    (tmp_path / "pre.old-1700000000000000001").mkdir()  # half deleted
    (tmp_path / "pre.older-1").mkdir()  # not a leftover of this run
    runs.check_output_dir(out, overwrite=True)
    assert tag(out) == "new" and not (out / runs.STAGING_MARK).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre", "pre.older-1"]


def test_recover_between_the_renames_finishes_the_rename(tmp_path):
    out = tmp_path / "pre"
    fake_run(tmp_path / "pre.old-1700000000000000000", "old")
    fake_run(partial(out), "new", staging_mark=True)
    assert runs.require_run(out, "model")["config_hash"] == "new"  # a consumer finds the new run
    assert tag(out) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["pre"]


def test_recover_restores_the_old_run_when_the_new_one_is_not_complete(tmp_path):
    out = tmp_path / "pre"
    fake_run(tmp_path / "pre.old-1700000000000000000", "older")
    fake_run(tmp_path / "pre.old-1700000000000000005", "old")
    fake_run(partial(out), "new", staging_mark=True)
    (partial(out) / "manifest.json").unlink()
    assert runs.require_run(out, "model")["config_hash"] == "old"  # the newest finished run is back
    assert tag(out) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre", "pre.partial"]  # the unfinished run stays, to resume


def test_recover_keeps_leftovers_when_out_is_not_a_finished_run(tmp_path):
    out = tmp_path / "pre"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fake_run(tmp_path / "pre.old-1", "old")
    with pytest.raises(LlmkitError, match="not an llmkit run"):
        runs.check_output_dir(out, overwrite=True)
    assert tag(tmp_path / "pre.old-1") == "old"  # never deleted while nothing finished replaces it


def test_recover_a_staging_dir_that_only_looks_finished_is_left_alone(tmp_path):
    """A .partial holding a manifest but no staging mark of the same config was not made by finalize()."""
    out = tmp_path / "pre"
    fake_run(partial(out), "new")
    with pytest.raises(LlmkitError, match="did not finish"):
        runs.require_run(out, "model")
    (partial(out) / runs.STAGING_MARK).write_text(json.dumps({"stage": "pretrain", "config_hash": "other"}))
    with pytest.raises(LlmkitError, match="did not finish"):
        runs.require_run(out, "model")
    assert not out.exists()


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, and the CLI does not catch it."""


def kill_at_second_rename(monkeypatch, staging: Path) -> None:
    real = Path.rename

    def rename(self, target):
        if Path(self) == staging:
            raise Killed
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)


def tokenizer_argv(out: Path, corpus: Path, vocab: int) -> list:
    return ["tokenizer", "--output_dir", out, "--datasets", f"[{corpus}]", "--vocab_size", str(vocab)]


@pytest.mark.parametrize("new_run_complete", [True, False])
def test_overwrite_killed_between_the_renames(tmp_path, corpus, capsys, monkeypatch, new_run_complete):
    out = tmp_path / "runs" / "tok"
    assert llmkit(*tokenizer_argv(out, corpus, 300)) == 0
    first = runs.read_manifest(out)
    with monkeypatch.context() as m:
        kill_at_second_rename(m, partial(out))
        with pytest.raises(Killed):
            llmkit(*tokenizer_argv(out, corpus, 320), "--overwrite")
    left = sorted(p.name for p in out.parent.iterdir())  # the state the kill leaves
    assert len(left) == 2 and left[0].startswith("tok.old-") and left[1] == "tok.partial"
    second = runs.read_manifest(partial(out))
    assert second and second["config_hash"] != first["config_hash"]
    if not new_run_complete:
        (partial(out) / "manifest.json").unlink()
    capsys.readouterr()
    # the next start of anything that opens the run: here the first command again, without --overwrite
    assert llmkit(*tokenizer_argv(out, corpus, 300)) == 2
    expected = second if new_run_complete else first
    assert runs.read_manifest(out) == expected
    assert "already holds a finished 'tokenizer' run" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == (["tok"] if new_run_complete else ["tok", "tok.partial"])
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(out)


def test_llmkit_run_skips_a_stage_killed_between_the_renames(tmp_path, corpus, capsys):
    import yaml

    recipe = tmp_path / "recipe"
    recipe.mkdir()
    out = tmp_path / "runs" / "tok"
    (recipe / "tokenizer.yaml").write_text(yaml.safe_dump({"output_dir": str(out), "datasets": [str(corpus)], "vocab_size": 300}))
    (recipe / "pipeline.yaml").write_text("name: t\nstages: [tokenizer]\n")
    assert llmkit("run", recipe) == 0
    done = runs.read_manifest(out)
    # as finalize() leaves it when killed between the renames of a replacement by the same config
    shutil.copytree(out, partial(out))
    (partial(out) / runs.STAGING_MARK).write_text(json.dumps({"stage": "tokenizer", "config_hash": done["config_hash"]}))
    out.rename(out.with_name("tok.old-1"))
    capsys.readouterr()
    assert llmkit("run", recipe) == 0
    assert "finished run found" in capsys.readouterr().out
    assert runs.read_manifest(out) == done and sorted(p.name for p in out.parent.iterdir()) == ["report.html", "report.md", "tok"]


# --------------------------------------------------------------------------- 4. paths that write stay inside the run


@dataclasses.dataclass
class WriterArgs:
    output_dir: str = ""
    logging_dir: str | None = None
    model_init_kwargs: dict | None = None


def confine(out: Path, **kw) -> WriterArgs:
    a = WriterArgs(output_dir=str(out), **kw)
    runs.confine_write_paths(StageConfig(args=[a], explicit={}, source="x.yaml"), out)
    return a


def test_write_paths_inside_the_run_go_to_staging_and_others_are_refused(tmp_path):
    out = tmp_path / "runs" / "sft"
    staged = partial(out).resolve()
    a = confine(out, logging_dir=str(out / "tb"), model_init_kwargs={"cache_dir": str(out / "cache"), "dtype": "auto"})
    assert a.logging_dir == str(staged / "tb") and a.model_init_kwargs == {"cache_dir": str(staged / "cache"), "dtype": "auto"}
    assert confine(out, logging_dir=str(partial(out) / "tb")).logging_dir == str(partial(out) / "tb")
    assert confine(out).logging_dir is None
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs").mkdir(exist_ok=True)
    cases = {
        "logging_dir": {"logging_dir": str(tmp_path / "elsewhere")},
        "model_init_kwargs.cache_dir": {"model_init_kwargs": {"cache_dir": str(tmp_path / "hf")}},
        "model_init_kwargs.offload_folder": {"model_init_kwargs": {"offload_folder": str(out / ".." / "off")}},
    }
    for key, kw in cases.items():
        with pytest.raises(LlmkitError, match=f"x.yaml: {key}=.*outside the run's output directory"):
            confine(out, **kw)
    out.mkdir(parents=True)
    (out / "link").symlink_to(tmp_path / "elsewhere")  # inside by name, outside in fact
    with pytest.raises(LlmkitError, match="logging_dir"):
        confine(out, logging_dir=str(out / "link" / "tb"))


# --------------------------------------------------------------------------- 5. hardware and optional packages


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour")
def test_fp16_on_cpu_is_refused_and_bf16_is_honoured(tmp_path, tokenizer_run, corpus, capsys):
    out = tmp_path / "pre"
    assert llmkit(*pretrain_argv(out, tokenizer_run, corpus, 1, "--fp16", "true")) == 2
    assert "fp16 needs a GPU" in error_line(capsys) and not out.exists() and not partial(out).exists()
    assert llmkit(*pretrain_argv(out, tokenizer_run, corpus, 2, "--bf16", "true", "--save_strategy", "no")) == 0
    import yaml

    resolved = yaml.safe_load((out / "config_resolved.yaml").read_text())
    assert resolved["bf16"] is True and resolved["use_cpu"] is True


def hide_package(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == name else real(n, *a, **k))


@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
def test_qlora_without_bitsandbytes_is_refused(tmp_path, base_model, sft_data, capsys, monkeypatch, flag):
    hide_package(monkeypatch, "bitsandbytes")
    out = tmp_path / "sft"
    rc = llmkit("sft", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]",
                "--use_peft", flag, "--max_steps", "1")
    assert rc == 2
    line = error_line(capsys)
    assert "bitsandbytes" in line and "pip install bitsandbytes" in line
    assert not out.exists() and not partial(out).exists()


@pytest.fixture
def math_prompts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "math.jsonl", read_jsonl(DATA / "math_easy_train.jsonl", 20))


@pytest.mark.parametrize("case", ["no_cuda", "no_vllm"])
def test_use_vllm_needs_cuda_and_vllm(tmp_path, base_model, math_prompts, capsys, monkeypatch, case):
    if case == "no_cuda":
        monkeypatch.setattr(devices, "has_cuda", lambda: False)
        expected = "use_vllm needs a CUDA GPU"
    else:
        monkeypatch.setattr(devices, "has_cuda", lambda: True)  # as on a GPU node without vLLM
        monkeypatch.setattr(devices, "gpu_defaults", lambda: {})  # no real GPU to ask for bf16/tf32
        hide_package(monkeypatch, "vllm")
        expected = "use_vllm needs vLLM, which is not installed"
    out = tmp_path / "grpo"
    rc = llmkit("grpo", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{math_prompts}]",
                "--num_generations", "2", "--per_device_train_batch_size", "2", "--use_vllm", "true", "--bf16", "false", "--max_steps", "1")
    assert rc == 2
    line = error_line(capsys)
    assert expected in line and "use_vllm: false" in line
    assert not out.exists() and not partial(out).exists()


def test_killed_after_the_last_checkpoint_resumes_without_an_extra_step(tmp_path, tokenizer_run, corpus):
    """A run killed after its final-step checkpoint (during the final save or the rename) is
    finished from that checkpoint: transformers alone would train one step past max_steps."""
    from test_resume import pretrain_args

    from llmkit.runs import STAGING_MARK

    out = tmp_path / "run"
    args = pretrain_args(out, tokenizer_run, corpus, steps=12)
    args[args.index("--save_steps") + 1] = "5"
    assert llmkit(*args) == 0
    whole = json.loads((out / "manifest.json").read_text())
    assert (out / "checkpoints" / "checkpoint-12").is_dir()
    staging = out.with_name("run.partial")  # as if killed just before the manifest and the rename
    out.rename(staging)
    (staging / "manifest.json").unlink()
    (staging / STAGING_MARK).write_text(json.dumps({"stage": "pretrain", "config_hash": whole["config_hash"], "started_at": "x"}))
    assert llmkit(*args) == 0
    again = json.loads((out / "manifest.json").read_text())
    assert again["steps"] == 12
    assert again["metrics"] == whole["metrics"]
