"""Stacked runs (LoRA SFT -> LoRA DPO / GRPO / PPO, full SFT -> LoRA DPO): what eval, serve,
merge, chat and PEFT's own loader use is the model that was trained.

The reference is built by hand from the pieces, with PEFT only: the base, the SFT adapter folded
into it (``merge_and_unload``), then the stage's own adapter (``<run>/delta``) on top.  Every
consumer's logits must equal it within 1e-4 and differ from "base + the stage's adapter alone"
(what an adapter saved with ``base_model_name_or_path: <base>`` gave before), so the tests fail
on the old behaviour.  The stage's own in-memory held-out numbers (DPO preference metrics, PPO's
greedy samples) must be reproduced from what the consumers load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import llmkit, read_jsonl, write_jsonl

from llmkit.config import LlmkitError

PROMPTS = ["¿Cuál es la capital de Chile?", "Escribe una frase sobre el mar.", "La respuesta es"]
TOL = 1e-4


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def logits_of(model, tok) -> torch.Tensor:
    out = []
    model.eval()
    with torch.no_grad():
        for p in PROMPTS:
            out.append(model(**tok(p, return_tensors="pt")).logits[0].float())
    return torch.cat(out)


def base_and_tok(base: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), AutoTokenizer.from_pretrained(base)


def folded(base: Path, sft: Path):
    """base + SFT as the stage trained on it: a LoRA run folded in, a full run as it is."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if (sft / "adapter_config.json").exists():
        model, _ = base_and_tok(base)
        return PeftModel.from_pretrained(model, sft).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)


def reference(base: Path, sft: Path, run: Path):
    """By hand: (base + sft folded) + the run's own adapter."""
    from peft import PeftModel

    delta = run / "delta" if (run / "delta").is_dir() else run
    return PeftModel.from_pretrained(folded(base, sft), delta)


def wrong(base: Path, run: Path):
    """What the stage's adapter gives over the bare base (the bug this file guards against)."""
    from peft import PeftModel

    model, _ = base_and_tok(base)
    return PeftModel.from_pretrained(model, run / "delta")


def consumer_logits(run: Path, tok, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Logits of the model each llmkit consumer builds for RUN."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from llmkit.evaluation.runner import resolve_target
    from llmkit.serving import plan_serving

    got: dict[str, torch.Tensor] = {}
    # PEFT's own loader, as any tool outside llmkit reads adapter_config.json
    got["peft"] = logits_of(AutoPeftModelForCausalLM.from_pretrained(run, dtype=torch.float32), tok)
    # serve (vLLM's LoRA: the planned base + adapter) and chat (which serves the run the same way)
    plan = plan_serving(str(run))
    (name, adapter), = plan.adapters.items()
    base = AutoModelForCausalLM.from_pretrained(plan.model, dtype=torch.float32)
    got["serve"] = logits_of(PeftModel.from_pretrained(base, adapter), tok)
    # eval: lm-eval's hf model is the target's model with `peft=<adapter>`
    target = resolve_target(str(run))
    base = AutoModelForCausalLM.from_pretrained(target.model, dtype=torch.float32)
    got["eval"] = logits_of(PeftModel.from_pretrained(base, target.adapter), tok)
    # merge (also what eval/serve use for --merged and vLLM on CPU)
    merged = tmp_path / f"{run.name}-merged"
    assert llmkit("merge", run, "--output_dir", merged, "--dtype", "float32") == 0
    got["merge"] = logits_of(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), tok)
    return got


def assert_is_trained_model(run: Path, base: Path, sft: Path, tmp_path: Path) -> None:
    _, tok = base_and_tok(base)
    ref = logits_of(reference(base, sft, run), tok)
    bad = logits_of(wrong(base, run), tok)
    assert (ref - bad).abs().max() > 100 * TOL, "test cannot tell the stacked model from base + delta"
    for consumer, got in consumer_logits(run, tok, tmp_path).items():
        err = (got - ref).abs().max().item()
        assert err < TOL, f"{consumer}: logits differ from base + sft + {run.name} by {err}"


# ----------------------------------------------------------------------------- tests


def test_lora_dpo_over_lora_sft_is_the_trained_model_everywhere(tmp_path, vllm_base, lora_runs, stacked_dpo):
    assert_is_trained_model(stacked_dpo, vllm_base, lora_runs["sft"], tmp_path)
    cfg = json.loads((stacked_dpo / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(vllm_base) and cfg["r"] == 8 + 4
    chain = manifest(stacked_dpo)["lineage"]
    assert [s["path"] for s in chain] == [str(vllm_base), str(lora_runs["sft"]), str(stacked_dpo)]
    assert [s["weights"] for s in chain] == ["full", "lora", "lora (stacked)"]


def test_consumers_reproduce_the_stage_s_own_held_out_preference_metrics(vllm_base, lora_runs, stacked_dpo, stacked_prefs):
    """The DPO stage measured its metrics on the model in memory; PEFT's loader must give them back."""
    from peft import AutoPeftModelForCausalLM

    from llmkit.stages.dpo import preference_metrics

    _, tok = base_and_tok(vllm_base)
    held = read_jsonl(stacked_prefs[1])
    m = manifest(stacked_dpo)["metrics"]
    loaded = AutoPeftModelForCausalLM.from_pretrained(stacked_dpo, dtype=torch.float32)
    again = preference_metrics(loaded, tok, held, 0.1, ref=folded(vllm_base, lora_runs["sft"]))
    for key in ("preference_accuracy", "implicit_reward_accuracy"):
        assert again[key] == pytest.approx(m[key], abs=1e-9), key
    assert again["implicit_reward_margin"] == pytest.approx(m["implicit_reward_margin"], abs=1e-3)


def test_delta_alone_fails_loudly_outside_llmkit(stacked_dpo):
    """The stage's own adapter is kept, but no loader can put it on the wrong base silently."""
    from peft import AutoPeftModelForCausalLM

    assert (stacked_dpo / "delta" / "adapter_model.safetensors").is_file()
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises, it must not load
        AutoPeftModelForCausalLM.from_pretrained(stacked_dpo / "delta")


def test_a_stacked_run_from_an_older_llmkit_is_refused(tmp_path, stacked_dpo):
    """A run saved with only its own adapter over the base (no lineage) is refused by every consumer."""
    import shutil

    from llmkit.modeling import check_model_source
    from llmkit.serving import plan_serving

    old = tmp_path / "old-dpo"
    shutil.copytree(stacked_dpo, old)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(old / "delta" / f, old / f)
    cfg = json.loads((old / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = manifest(stacked_dpo)["lineage"][0]["path"]
    (old / "adapter_config.json").write_text(json.dumps(cfg))
    m = manifest(old)
    del m["lineage"]
    (old / "manifest.json").write_text(json.dumps(m))
    for call in (lambda: check_model_source(str(old)), lambda: plan_serving(str(old))):
        with pytest.raises(LlmkitError, match="older llmkit"):
            call()
    assert llmkit("merge", old, "--output_dir", tmp_path / "m") == 2
    assert not (tmp_path / "m").exists()


def test_lora_grpo_over_lora_sft_is_the_trained_model_everywhere(tmp_path, vllm_base, lora_runs):
    d = tmp_path / "data"
    rows = [{"prompt": [{"role": "user", "content": f"¿Cuánto es {a} más {b}?"}], "answer": str(a + b)} for a in range(6) for b in range(6)]
    train = write_jsonl(d / "train.jsonl", rows)
    out = tmp_path / "grpo"
    rc = llmkit("grpo", "--output_dir", out, "--model_name_or_path", lora_runs["sft"], "--datasets", f"[{train}]",
                "--eval_split_size", "0", "--reward_funcs", "[format, length]", "--use_peft", "--lora_r", "8", "--use_rslora",
                "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "8",
                "--max_steps", "4", "--learning_rate", "5e-2", "--logging_steps", "2", "--beta", "0.0")
    assert rc == 0
    assert_is_trained_model(out, vllm_base, lora_runs["sft"], tmp_path)
    assert [s["weights"] for s in manifest(out)["lineage"]] == ["full", "lora", "lora (stacked)"]


def test_full_sft_then_lora_dpo_is_the_trained_model_everywhere(tmp_path, vllm_base, sft_data, stacked_prefs):
    sft = tmp_path / "sft-full"
    assert llmkit("sft", "--output_dir", sft, "--model_name_or_path", vllm_base, "--datasets", f"[{sft_data[0]}]",
                  "--eval_split_size", "0", "--max_steps", "4", "--learning_rate", "5e-3", "--sample_prompts", "0",
                  "--max_length", "64", "--per_device_train_batch_size", "8") == 0
    out = tmp_path / "dpo"
    assert llmkit("dpo", "--output_dir", out, "--model_name_or_path", sft, "--datasets", f"[{stacked_prefs[0]}]",
                  "--eval_split_size", "0", "--max_steps", "6", "--per_device_train_batch_size", "8", "--learning_rate", "2e-2",
                  "--max_length", "64", "--use_peft", "--lora_r", "8") == 0
    assert not (out / "delta").exists()  # nothing to compose: the adapter's base is the full SFT run
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sft)
    _, tok = base_and_tok(vllm_base)
    ref = logits_of(reference(vllm_base, sft, out), tok)
    bad = logits_of(_over(vllm_base, out), tok)  # the new adapter over the base alone
    assert (ref - bad).abs().max() > 100 * TOL
    for consumer, got in consumer_logits(out, tok, tmp_path).items():
        assert (got - ref).abs().max().item() < TOL, consumer
    assert [s["path"] for s in manifest(out)["lineage"]] == [str(vllm_base), str(sft), str(out)]


def _over(base: Path, adapter: Path):
    from peft import PeftModel

    model, _ = base_and_tok(base)
    return PeftModel.from_pretrained(model, adapter)


def test_lora_ppo_over_lora_sft_is_the_trained_model_everywhere(tmp_path, vllm_base, lora_runs):
    """PPO trains the SFT adapter further: the saved adapter is over the base, and what the
    consumers load reproduces PPO's own greedy samples of the trained policy."""
    from transformers import AutoModelForCausalLM

    from llmkit.modeling import generate_completions

    d = tmp_path / "data"
    rows = [{"prompt": [{"role": "user", "content": f"Escribe sobre el número {i}."}]} for i in range(24)]
    train = write_jsonl(d / "train.jsonl", rows)
    out = tmp_path / "ppo"
    rc = llmkit("ppo", "--output_dir", out, "--model_name_or_path", lora_runs["sft"], "--datasets", f"[{train}]",
                "--eval_split_size", "4", "--reward_funcs", "[spanish, length]", "--response_length", "6",
                "--per_device_train_batch_size", "4", "--max_steps", "3", "--learning_rate", "5e-2", "--save_strategy", "no",
                "--sample_prompts", "4", "--use_peft")
    assert rc == 0
    chain = manifest(out)["lineage"]
    assert [s["weights"] for s in chain] == ["full", "lora", "lora (continued)"] and chain[1]["continued_by"] == str(out)
    _, tok = base_and_tok(vllm_base)
    sft_logits = logits_of(_over(vllm_base, lora_runs["sft"]), tok)
    got = consumer_logits(out, tok, tmp_path)
    for consumer, logits in got.items():
        assert (logits - got["peft"]).abs().max().item() < TOL, consumer
    assert (got["peft"] - sft_logits).abs().max() > 100 * TOL  # PPO moved the policy
    samples = read_jsonl(out / "samples.jsonl")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ppo-merged", dtype=torch.float32)
    merged.generation_config.eos_token_id = None
    again = generate_completions(merged, tok, [s["prompt"] for s in samples], max_new_tokens=6)
    assert again == [s["after"].strip() for s in samples]
