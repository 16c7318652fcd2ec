"""bench/gpu_check.sh, the one command for a lent GPU, checked here before any GPU time is spent:
its --dry-run runs the same script end to end on the CPU (install step, random Qwen2-shaped models,
llmkit and the plain TRL scripts side by side, FLOPs, MFU, results), and its FLOP count is checked
against the real architectures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402

DRY_RUNS = ("sft_lora", "sft_full_packed", "dpo_lora", "grpo_lora")


def _wheel(d: Path, name: str, version: str, module: str, body: str) -> Path:
    """A minimal pure-Python wheel, as pip installs it."""
    whl = d / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{module}/__init__.py": body,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return whl


def test_flop_count_matches_the_real_architectures():
    """The shapes are Qwen2.5-0.5B's and 1.5B's (their published parameter counts), and the
    matmul parameters of the FLOP count are exactly the model's linear weights (lm_head included)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    published = {"qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304}
    for name, shape in gpu_check.SHAPES.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(Qwen2Config(**shape))
        assert sum(p.numel() for p in model.parameters()) == published[name]
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        cfg = {**shape, "head_dim": shape["hidden_size"] // shape["num_attention_heads"]}
        assert gpu_check.matmul_params(cfg) == linear

    m = {**gpu_check.SHAPES["qwen2.5-0.5b"], "head_dim": 64}
    res = {"model": m, "tokens": 1000, "measured_s": 2.0, "attn_len2": 10 * 100**2, "peft": False}
    f = gpu_check.flops(res, "sft")
    n = gpu_check.matmul_params(m)
    assert f["matmul_flops"] == 6 * n * 1000
    assert f["attention_flops"] == 6 * 24 * 14 * 64 * 10 * 100**2  # causal: half of 12 * L * h * hd * len^2
    assert gpu_check.flops({**res, "peft": True}, "sft")["matmul_flops"] == 4 * n * 1000
    assert gpu_check.flops({**res, "peft": True}, "dpo")["matmul_flops"] == 6 * n * 1000
    mfu = gpu_check.with_mfu(dict(res), "sft", {"datasheet": 989.5})["mfu"]["datasheet"]
    assert mfu == pytest.approx(f["total_flops"] / 2.0 / 1e12 / 989.5, rel=1e-3)


def test_sequence_lengths_of_padded_packed_and_preference_batches():
    import torch

    padded = {"input_ids": torch.ones(2, 5), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    assert gpu_check.sequence_lengths(padded) == [3, 5]
    packed = {"input_ids": torch.ones(1, 9), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 0]])}
    assert gpu_check.sequence_lengths(packed) == [3, 4]  # the trailing zeros are padding
    grpo = {"prompt_mask": torch.tensor([[1, 1], [0, 1]]), "completion_mask": torch.tensor([[1, 0, 0], [1, 1, 1]])}
    assert gpu_check.sequence_lengths(grpo) == [3, 4]


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "gpucheckprobe", "0.1", "gpucheckprobe", "OK = True\n")
    _wheel(wheels, "torch", "0.0.1", "torch", "raise ImportError('the carried wheel shadowed the image torch')\n")
    out, site = tmp_path / "out", tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "WHEEL_DIR": str(wheels), "SITE": str(site)}
    r = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--dry-run", "--out", str(out),
                        "--work", str(tmp_path / "work")], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]

    # 1. install: the image's torch kept, a missing distribution installed, llmkit from the tree
    install = (out / "install.log").read_text()
    assert "kept the image's torch" in install and not (site / "torch").exists()
    assert (site / "gpucheckprobe" / "__init__.py").is_file()
    res = json.loads((out / "results.json").read_text())
    env_ = res["environment"]
    assert Path(env_["module_paths"]["llmkit"]).is_relative_to(site)  # the installed copy, not the checkout
    assert env_["versions"]["torch"] == __import__("torch").__version__
    assert (out / "nvidia-smi.txt").is_file() and (out / "environment.json").is_file()

    # 2-4. every dry-run run measured on both sides, the same model and the same data on both
    assert res["dry_run"] is True
    runs = {x["run"]: x for x in res["runs"]}
    assert set(runs) == {x[0] for x in gpu_check.RUNS}
    for name in DRY_RUNS:
        row = runs[name]
        for side in ("llmkit", "trl"):
            s = row[side]
            assert s["status"] == "ok", (name, side, s)
            assert s["tokens_per_s"] > 0 and s["s_per_step"] > 0 and s["measured_steps"] == res["steps"] - 1
            assert s["model"]["model_type"] == "qwen2" and s["peft"] is True or name == "sft_full_packed"
            assert s["flops"]["total_flops"] > s["flops"]["matmul_flops"] > 0
            assert s["mfu"]["datasheet"] == pytest.approx(s["flops"]["tflops_per_s"] / gpu_check.PEAK_DATASHEET, rel=1e-3)
            assert s["args"]["use_cpu"] == "True"  # the TRL script ran with its CPU settings in the dry run
        assert row["tokens_per_s_ratio"] == pytest.approx(row["llmkit"]["tokens_per_s"] / row["trl"]["tokens_per_s"], rel=1e-2)
        assert row["llmkit"]["model"] == row["trl"]["model"]
    # sft: same rows in the same order (padding-free batches keep them): the same tokens. dpo is not
    # compared: llmkit's length-grouped batches (llmkit/batching.py) take other rows into each step
    assert runs["sft_lora"]["llmkit"]["tokens"] == runs["sft_lora"]["trl"]["tokens"]
    assert runs["sft_lora"]["llmkit"]["flops"]["flops_per_token_factor"] == 4
    assert runs["dpo_lora"]["llmkit"]["flops"]["flops_per_token_factor"] == 6
    assert runs["sft_full_packed"]["llmkit"]["flops"]["flops_per_token_factor"] == 6
    packed = runs["sft_full_packed"]
    for side in ("llmkit", "trl"):  # packing on both sides, attention counted per document, not per packed row
        assert packed[side]["args"]["packing"] == "True"
        assert packed[side]["tokens"] / packed[side]["sequences"] < 0.9 * res["max_length"]
    assert runs["sft_lora"]["llmkit"]["args"]["packing"] == "False" == runs["sft_lora"]["trl"]["args"]["packing"]
    for name in ("sft_full_liger", "sft_qlora"):
        assert runs[name]["skipped"] == "needs a CUDA GPU"
    assert "not importable" in runs["sft_full_packed_fa2"]["skipped"] or "CUDA" in runs["sft_full_packed_fa2"]["skipped"]
    md = (out / "results.md").read_text()
    assert "DRY RUN" in md and all(f"| {n} | llmkit |" in md for n in DRY_RUNS)
