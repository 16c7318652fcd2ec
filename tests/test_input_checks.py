"""Keys that make a library import an optional package (report_to, attn_implementation, optim,
use_liger_kernel, torch_compile) are checked before anything is written; a training log step
prints one llmkit line (no raw logs dict), the progress bar stays; config.yaml keeps integers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL, llmkit

from llmkit import runs
from llmkit.config import LlmkitError
from llmkit.stages import checks, devices

ERROR = "llmkit: error:"
STAGES = ["pretrain", "sft", "dpo", "grpo", "reward", "ppo"]


def one_error(capsys) -> str:
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.startswith(ERROR)]
    assert len(lines) == 1 and "Traceback" not in cap.out + cap.err, cap.err[-3000:]
    return lines[0]


def refused(capsys, tmp_path: Path, stage: str, *extra: str) -> str:
    out = tmp_path / "runs" / stage
    out.parent.mkdir(parents=True, exist_ok=True)
    before = sorted(p.name for p in out.parent.iterdir())
    rc = llmkit(stage, "--output_dir", out, "--model_name_or_path", tmp_path / "no-model", *extra)
    line = one_error(capsys)
    assert rc == 2
    assert sorted(p.name for p in out.parent.iterdir()) == before, "something was written"
    return line


def cfg_for(stage: str, *argv: str):
    from llmkit.cli import load_config_for

    return load_config_for(stage, None, ["--output_dir", "runs/x", *argv])[1]


def targs_of(cfg):
    return next(a for a in cfg.args if hasattr(a, "report_to"))


@pytest.mark.parametrize("stage", STAGES)
def test_report_to_without_its_package_is_refused_in_every_trainer_stage(tmp_path, capsys, monkeypatch, stage):
    real = checks.installed
    monkeypatch.setattr(checks, "installed", lambda m: m != "tensorboard" and real(m))  # `make setup` installs it (the trackers extra)
    line = refused(capsys, tmp_path, stage, "--report_to", "tensorboard")
    assert "report_to tensorboard" in line and "pip install tensorboard" in line, line


@pytest.mark.parametrize(("name", "pip"), [("wandb", "wandb"), ("comet_ml", "comet-ml"), ("mlflow", "mlflow"), ("trackio", "trackio")])
def test_report_to_names_the_package(name, pip, monkeypatch):
    monkeypatch.setattr(checks, "installed", lambda m: False)
    cfg = cfg_for("sft", "--report_to", name)
    with pytest.raises(LlmkitError, match=rf"report_to {name} needs .* pip install {pip}"):
        checks.check_optional_features(targs_of(cfg), cfg)


def test_report_to_list_and_unknown_name():
    cfg = cfg_for("sft", "--report_to", "[none]")
    checks.check_optional_features(targs_of(cfg), cfg)  # none: nothing to import
    cfg = cfg_for("sft", "--report_to", "tensorbord")
    with pytest.raises(LlmkitError, match=r"unknown report_to 'tensorbord'. Did you mean: tensorboard"):
        checks.check_optional_features(targs_of(cfg), cfg)


def test_installed_report_to_passes(monkeypatch):
    monkeypatch.setattr(checks, "installed", lambda m: m == "tensorboard")
    cfg = cfg_for("sft", "--report_to", "tensorboard")
    checks.check_optional_features(targs_of(cfg), cfg)


def test_bnb_optimizer_without_bitsandbytes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checks, "installed", lambda m: m != "bitsandbytes")
    line = refused(capsys, tmp_path, "sft", "--optim", "adamw_bnb_8bit")
    assert "optim adamw_bnb_8bit needs the bitsandbytes package" in line and "pip install bitsandbytes" in line, line
    monkeypatch.setattr(checks, "installed", lambda m: True)
    cfg = cfg_for("sft", "--optim", "paged_adamw_8bit")
    checks.check_optional_features(targs_of(cfg), cfg)


def test_optimizers_needing_packages_are_named(monkeypatch):
    monkeypatch.setattr(checks, "installed", lambda m: False)
    for optim, pip in [("galore_adamw", "galore-torch"), ("schedule_free_adamw", "schedulefree"), ("adamw_torch_8bit", "torchao"),
                       ("lomo", "lomo-optim"), ("stable_adamw", "torch-optimi")]:
        cfg = cfg_for("sft", "--optim", optim)
        with pytest.raises(LlmkitError, match=f"pip install {pip}"):
            checks.check_optional_features(targs_of(cfg), cfg)
    cfg = cfg_for("sft", "--optim", "adamw_torch")
    checks.check_optional_features(targs_of(cfg), cfg)  # torch's own


def test_galore_needs_target_modules(monkeypatch):
    monkeypatch.setattr(checks, "installed", lambda m: True)
    cfg = cfg_for("sft", "--optim", "galore_adamw")
    with pytest.raises(LlmkitError, match="optim_target_modules"):
        checks.check_optional_features(targs_of(cfg), cfg)


def test_unknown_optim_is_refused_with_a_suggestion(tmp_path, capsys):
    line = refused(capsys, tmp_path, "sft", "--optim", "adamw_torh")
    assert "unknown optim 'adamw_torh'" in line and "Did you mean: adamw_torch" in line, line


def test_flash_attention_on_cpu_and_without_the_package(tmp_path, capsys, monkeypatch):
    line = refused(capsys, tmp_path, "sft", "--attn_implementation", "flash_attention_2")
    assert "attn_implementation flash_attention_2 needs a CUDA GPU" in line and "sdpa" in line, line
    cfgs = {attn: cfg_for("sft", "--attn_implementation", attn) for attn in ("flash_attention_2", "flash_attention_3")}
    monkeypatch.setattr(devices, "has_cuda", lambda: True)  # a GPU machine (after the configs: their defaults ask torch)
    monkeypatch.setattr(checks, "installed", lambda m: False)
    for attn, pip in [("flash_attention_2", "flash-attn"), ("flash_attention_3", "flash-attn-3")]:
        with pytest.raises(LlmkitError, match=rf"needs the .* package, which is not installed: pip install {pip}"):
            checks.check_optional_features(targs_of(cfgs[attn]), cfgs[attn])
    monkeypatch.setattr(checks, "installed", lambda m: m == "flash_attn")
    checks.check_optional_features(targs_of(cfgs["flash_attention_2"]), cfgs["flash_attention_2"])


def test_unknown_attn_implementation_and_hub_kernels(tmp_path, capsys, monkeypatch):
    line = refused(capsys, tmp_path, "pretrain", "--attn_implementation", "flash_attn2")
    assert "unknown attn_implementation 'flash_attn2'" in line and "flash_attention_2" in line, line
    for ok in ("sdpa", "eager"):
        cfg = cfg_for("sft", "--attn_implementation", ok)
        checks.check_optional_features(targs_of(cfg), cfg)
    monkeypatch.setattr(checks, "installed", lambda m: m != "kernels")
    cfg = cfg_for("sft", "--attn_implementation", "kernels-community/flash-attn2")
    with pytest.raises(LlmkitError, match="pip install kernels"):
        checks.check_optional_features(targs_of(cfg), cfg)


def test_liger_kernel(tmp_path, capsys, monkeypatch):
    line = refused(capsys, tmp_path, "dpo", "--use_liger_kernel")
    assert "use_liger_kernel" in line and "pip install liger-kernel" in line, line
    monkeypatch.setattr(checks, "installed", lambda m: True)
    cfg = cfg_for("sft", "--use_liger_kernel")
    with pytest.raises(LlmkitError, match="needs a CUDA GPU"):
        checks.check_optional_features(targs_of(cfg), cfg)
    monkeypatch.setattr(devices, "has_cuda", lambda: True)
    checks.check_optional_features(targs_of(cfg), cfg)


def test_torch_compile_needs_a_compiler_on_cpu(monkeypatch):
    cfg = cfg_for("sft", "--torch_compile")
    if any(checks.shutil.which(c) for c in ("g++", "c++", "clang++")):
        checks.check_optional_features(targs_of(cfg), cfg)
    monkeypatch.setattr(checks.shutil, "which", lambda c: None)
    with pytest.raises(LlmkitError, match="torch_compile on a CPU needs a C\\+\\+ compiler"):
        checks.check_optional_features(targs_of(cfg), cfg)
    cfg = cfg_for("sft", "--torch_compile", "--torch_compile_backend", "aot_eager")
    checks.check_optional_features(targs_of(cfg), cfg)


# --------------------------------------------------------------------------- one line per log step


def test_one_llmkit_line_per_log_step_and_no_raw_dict(tmp_path, tokenizer_run, corpus, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    out = tmp_path / "runs" / "pre"
    rc = llmkit("pretrain", "--output_dir", out, "--tokenizer_name_or_path", tokenizer_run, "--model_config", json.dumps(TINY_MODEL),
                "--datasets", f"[{corpus}]", "--eval_split_size", "8", "--block_size", "64", "--max_steps", "6",
                "--per_device_train_batch_size", "4", "--logging_steps", "2", "--eval_steps", "3", "--warmup_steps", "2")
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    text = cap.out + cap.err
    assert "{'loss'" not in text and "'loss':" not in text and "'train_runtime'" not in text and "'eval_loss'" not in text, text[-3000:]
    steps = [ln for ln in cap.out.splitlines() if re.match(r"\[step \d+/6\] loss ", ln)]
    assert [ln.split("]")[0] for ln in steps] == ["[step 2/6", "[step 4/6", "[step 6/6"], cap.out
    assert all(" | lr " in ln and "ETA" in ln for ln in steps), steps
    evals = [ln for ln in cap.out.splitlines() if re.match(r"\[step \d+/6\] eval_loss ", ln)]
    assert [ln.split("]")[0] for ln in evals] == ["[step 3/6", "[step 6/6"], cap.out
    assert "6/6" in cap.err  # transformers' progress bar (with its ETA) is still there
    # config.yaml holds the numbers as written: warmup_steps is a float field in transformers
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["warmup_steps"] == 2 and isinstance(written["warmup_steps"], int)
    assert "warmup_steps: 2\n" in (out / "config.yaml").read_text()
    resolved = yaml.safe_load((out / "config_resolved.yaml").read_text())
    assert resolved["warmup_steps"] == 2 and isinstance(resolved["warmup_steps"], int)
    assert runs.read_manifest(out)["steps"] == 6


def test_disable_tqdm_prints_no_raw_dict_either(tmp_path, tokenizer_run, corpus, capsys):
    out = tmp_path / "runs" / "pre"
    rc = llmkit("pretrain", "--output_dir", out, "--tokenizer_name_or_path", tokenizer_run, "--model_config", json.dumps(TINY_MODEL),
                "--datasets", f"[{corpus}]", "--eval_split_size", "0", "--block_size", "64", "--max_steps", "2",
                "--per_device_train_batch_size", "4", "--logging_steps", "1", "--disable_tqdm")
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    assert "'loss'" not in cap.out + cap.err, cap.out
    assert len([ln for ln in cap.out.splitlines() if ln.startswith("[step ")]) == 2


def test_packed_attention_values_are_refused_before_anything_is_written(tmp_path, capsys):
    line = refused(capsys, tmp_path, "sft", "--packed_attention", "varlen")
    assert "packed_attention must be one of auto, per_sequence, mask, got 'varlen'" in line, line
    line = refused(capsys, tmp_path, "sft", "--attn_implementation", "eager", "--packed_attention", "per_sequence")
    assert "attn_implementation is eager" in line and "packed_attention: auto or mask" in line, line
