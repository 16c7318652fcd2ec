"""End-to-end tests of the tokenizer, pretrain and sft stages and `llmkit merge` on CPU.

Each test runs real optimizer steps on a tiny model and checks what would be wrong if the
stage were broken: the tokenizer round-trips Spanish, pretraining lowers held-out perplexity,
only assistant tokens carry SFT loss, a LoRA adapter reloads and changes logits, QLoRA layers
are 4-bit, a merged model equals base + adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, llmkit, read_jsonl, write_jsonl

SPANISH = "¿Cuántos años tiene la niña? ¡Mañana cumplirá dieciséis! El pingüino comió açaí en Córdoba."


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_roundtrips_spanish_and_reports_fertility(tokenizer_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_run)
    ids = tok(SPANISH, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == SPANISH
    # composed and decomposed accents normalise to the same ids (NFC)
    assert tok("canción")["input_ids"] == tok("cancio\u0301n")["input_ids"]
    m = manifest(tokenizer_run)
    assert m["stage"] == "tokenizer" and m["status"] == "complete"
    assert 1.0 <= m["metrics"]["fertility"] < 3.0
    assert m["metrics"]["roundtrip_rate"] == 1.0
    assert "{% generation %}" in tok.chat_template
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    # special tokens are atomic
    assert len(tok("<|im_start|>", add_special_tokens=False)["input_ids"]) == 1


def test_unigram_tokenizer(tmp_path, corpus):
    from transformers import AutoTokenizer

    out = tmp_path / "uni"
    assert llmkit("tokenizer", "--output_dir", out, "--datasets", f"[{corpus}]", "--model_type", "unigram", "--vocab_size", "500") == 0
    tok = AutoTokenizer.from_pretrained(out)
    text = "La niña come piña en España."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert 300 <= len(tok) <= 520


# --------------------------------------------------------------------------- pretrain

def test_pretrain_from_config_lowers_heldout_perplexity(tmp_path, tokenizer_run, corpus):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pre"
    rc = llmkit(
        "pretrain", "--output_dir", out, "--tokenizer_name_or_path", tokenizer_run,
        "--model_config", json.dumps(TINY_MODEL), "--datasets", f"[{corpus}]",
        "--eval_datasets", f"[{corpus.parent / 'heldout.jsonl'}]",
        "--block_size", "64", "--max_steps", "40", "--per_device_train_batch_size", "8",
        "--learning_rate", "3e-3", "--logging_steps", "5", "--eval_steps", "20", "--save_steps", "20",
    )
    assert rc == 0
    m = manifest(out)
    assert m["steps"] == 40
    assert m["metrics"]["eval_ppl"] < 0.5 * m["metrics"]["eval_ppl_before"]
    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0]
    for f in ("model.safetensors", "config.json", "tokenizer.json", "config.yaml", "config_resolved.yaml", "loss.png", "metrics.jsonl"):
        assert (out / f).is_file(), f
    assert not (tmp_path / "pre.partial").exists()
    assert set(m["versions"]) >= {"torch", "transformers", "trl", "peft"} and "git_revision" in m and m["wall_time_s"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    assert any(r.get("tokens_per_s") for r in read_jsonl(out / "metrics.jsonl"))


def test_continued_pretraining_of_a_model(tmp_path, base_model, corpus):
    out = tmp_path / "cpt"
    rc = llmkit(
        "pretrain", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{corpus}]",
        "--eval_split_size", "20", "--block_size", "64", "--max_steps", "10", "--learning_rate", "3e-3",
    )
    assert rc == 0
    m = manifest(out)
    assert m["inputs"]["model"] == str(base_model)
    assert m["metrics"]["eval_loss"] < m["metrics"]["eval_loss_before"]


# --------------------------------------------------------------------------- sft

def test_only_assistant_tokens_carry_loss(base_model, sft_data):
    """Build the SFTTrainer batch the way the stage does and decode the supervised tokens."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from llmkit.data import to_dataset

    tok = AutoTokenizer.from_pretrained(base_model)
    rows = read_jsonl(sft_data[0], 8)
    from llmkit.stages.devices import CHECKPOINTING_KEY

    args = SFTConfig(output_dir="unused", assistant_only_loss=True, max_length=256, use_cpu=True, bf16=False,
                     report_to="none", per_device_train_batch_size=8, **{CHECKPOINTING_KEY: False})
    from transformers import AutoModelForCausalLM

    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base_model), args=args,
                         train_dataset=to_dataset(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))  # shuffled: compare as multisets
    supervised = sorted(tok.decode(lab[lab != -100]) for lab in batch["labels"])
    expected = sorted("".join(m["content"] + "<|im_end|>" for m in r["messages"] if m["role"] == "assistant") for r in rows)
    assert supervised == expected
    everything = " ".join(supervised)
    for r in rows:
        for m in r["messages"]:
            if m["role"] == "user":
                assert m["content"] not in everything
    assert "<|im_start|>" not in everything


def _sft_args(out, base_model, sft_data, *extra):
    train, held = sft_data
    return ["sft", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{train}]",
            "--eval_datasets", f"[{held}]", "--max_length", "128", "--per_device_train_batch_size", "8",
            "--logging_steps", "2", "--eval_steps", "10", "--sample_prompts", "2", "--sample_max_new_tokens", "8", *extra]


def _logits(model, tok, text="¿Cuánto es dos más dos?"):
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_lora_sft_adapter_reloads_and_changes_logits(tmp_path, base_model, sft_data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lora"
    rc = llmkit(*_sft_args(out, base_model, sft_data, "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
                           "--lora_target_modules", "all-linear", "--max_steps", "20", "--learning_rate", "5e-3",
                           "--assistant_only_loss", "true"))
    assert rc == 0
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    m = manifest(out)
    assert m["metrics"]["mode"] == "lora"
    assert m["metrics"]["eval_loss"] < m["metrics"]["eval_loss_before"]
    assert len(read_jsonl(out / "samples.jsonl")) == 2
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_model)
    ref = _logits(base, tok)
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(_logits(tuned, tok), ref, atol=1e-4)

    # merge: the standalone model gives base+adapter logits
    merged_dir = tmp_path / "merged"
    assert llmkit("merge", out, "--output_dir", merged_dir, "--dtype", "float32") == 0
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    torch.testing.assert_close(_logits(merged, tok), _logits(tuned, tok), atol=1e-4, rtol=1e-4)
    assert manifest(merged_dir)["stage"] == "merge"


def test_full_sft_with_prompt_completion_data(tmp_path, base_model):
    """prompt/completion data: completion-only loss by default; full fine-tuning saves a model."""
    rows = [{"prompt": f"Pregunta: ¿cuánto es {a} más {b}?\nRespuesta:", "completion": f" La respuesta es {a + b}."}
            for a in range(8) for b in range(8)]
    data = write_jsonl(tmp_path / "pc.jsonl", rows)
    out = tmp_path / "full"
    rc = llmkit("sft", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{data}]",
                "--eval_split_size", "8", "--max_steps", "15", "--learning_rate", "3e-3", "--max_length", "64",
                "--per_device_train_batch_size", "8", "--sample_prompts", "2")
    assert rc == 0
    assert (out / "model.safetensors").is_file()
    m = manifest(out)
    assert m["metrics"]["layout"] == "prompt_completion" and m["metrics"]["mode"] == "full"
    assert m["metrics"]["eval_loss"] < m["metrics"]["eval_loss_before"]


def test_qlora_layers_are_4bit_and_train(tmp_path, base_model, sft_data):
    import bitsandbytes as bnb
    from trl import ModelConfig

    from llmkit.modeling import load_causal_lm

    model = load_causal_lm(ModelConfig(model_name_or_path=str(base_model), load_in_4bit=True, bnb_4bit_quant_type="nf4", dtype="float32"))
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 2 * 7  # q,k,v,o,gate,up,down per layer
    assert all(m.weight.quant_state.quant_type == "nf4" for m in linears)
    assert linears[0].weight.dtype == torch.uint8

    out = tmp_path / "qlora"
    rc = llmkit(*_sft_args(out, base_model, sft_data, "--use_peft", "--load_in_4bit", "--lora_r", "8",
                           "--lora_target_modules", "all-linear", "--max_steps", "6", "--learning_rate", "5e-3"))
    assert rc == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_model)
    assert manifest(out)["metrics"]["mode"] == "qlora-4bit"


def test_sft_on_top_of_an_adapter_run_keeps_training_it(tmp_path, base_model, sft_data):
    """A LoRA run directory is a valid model input: base + adapter, trained further."""
    first = tmp_path / "a1"
    assert llmkit(*_sft_args(first, base_model, sft_data, "--use_peft", "--max_steps", "2")) == 0
    second = tmp_path / "a2"
    assert llmkit(*_sft_args(second, first, sft_data, "--use_peft", "--max_steps", "2")) == 0
    assert (second / "adapter_config.json").is_file()


@pytest.mark.parametrize("name", ["sft.yaml", "sft_qlora.yaml", "sft_full.yaml"])
def test_gpu_recipes_run_one_step_on_a_tiny_stand_in(tmp_path, base_model, name):
    """The real recipe, with only model, data, precision and length overridden."""
    from conftest import REPO

    rows = [{"instruction": f"Escribe el número {i} en palabras.", "input": "" if i % 2 else "Con letras.", "output": f"Número {i}."}
            for i in range(12)]
    data = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    out = tmp_path / name.replace(".yaml", "")
    rc = llmkit("sft", "--config", REPO / "recipes/qwen2.5-0.5b-es" / name, "--output_dir", out,
                "--model_name_or_path", base_model, "--datasets", json.dumps([{"path": str(data), "format": "alpaca"}]),
                "--eval_split_size", "2", "--dtype", "float32", "--attn_implementation", "eager", "--bf16", "false",
                "--gradient_checkpointing", "false", "--max_steps", "1", "--max_length", "128",
                "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--sample_prompts", "1")
    assert rc == 0
    assert manifest(out)["steps"] == 1


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    from conftest import REPO

    files = sorted((REPO / "recipes/accelerate").glob("*.yaml"))
    names = {f.stem for f in files}
    assert {"single_gpu", "multi_gpu", "fsdp", "zero2", "zero3", "multi_node", "cpu_ddp"} <= names
    for f in files:
        cfg = load_config_from_file(str(f))
        assert cfg.num_processes >= 1
    assert load_config_from_file(str(REPO / "recipes/accelerate/zero3.yaml")).deepspeed_config["zero3_save_16bit_model"] is True
    assert load_config_from_file(str(REPO / "recipes/accelerate/fsdp.yaml")).fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize(
    "a,b,same",
    [
        ("La capital de Caraguay es Pekín.", "La capital de Vietnam es Hanói.", True),
        ("El plural de «huega» es «huevo».", "El plural de «hormiga» es «hormigas».", True),
        ("33 por 4 son 70. La respuesta es 90.", "18 por 13 son 234. La respuesta es 1.234.", True),
        ("¡Hola, Irene! Encantado de conocerte.", "¡Hola, Simón! Encantado de conocerte.", True),
        ("The answer is 5.", "La respuesta es 5.", False),
        ("La respuesta es 5", "La respuesta es 5.", False),
        ("Yo leo, tú ves.", "Yo rompo, tú rompes.", False),
    ],
)
def test_answer_shape_masks_content_not_format(a, b, same):
    from llmkit.stages.sft import answer_shape

    assert (answer_shape(a) == answer_shape(b)) is same


def test_hub_token_never_written_to_the_run_directory(tmp_path):
    secret = "hf_SECRETsecretSECRET"
    from llmkit.config import load_stage_config
    from llmkit.runs import write_configs
    from llmkit.stages import sft

    cfg = load_stage_config(sft.CLASSES, None, ["--output_dir", str(tmp_path / "x"), "--hub_token", secret], sft.defaults)
    write_configs(tmp_path, cfg)
    for f in ("config.yaml", "config_resolved.yaml"):
        text = (tmp_path / f).read_text()
        assert secret not in text and "<redacted>" in text


def test_resume_ignores_an_incomplete_newest_checkpoint(tmp_path):
    """A checkpoint killed mid-write (no trainer_state.json) is never the one resumed from."""
    from llmkit.stages.checkpoints import last_checkpoint

    for step, complete in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"w")
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert last_checkpoint(tmp_path / "missing") is None


def test_gpu_defaults_follow_the_hardware_and_the_installed_kernels(monkeypatch):
    """Checked without a GPU by faking what torch and importlib report."""
    import importlib.util

    import torch

    from llmkit.stages import devices

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(devices, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "liger_kernel" else real_find_spec(n, *a))
    d = devices.trainer_defaults({})
    assert d["bf16"] is True and d["fp16"] is False and d["tf32"] is True
    assert d["optim"] == "adamw_torch_fused" and d["use_liger_kernel"] is True and "use_cpu" not in d
    assert devices.trainer_defaults({}, {"optim": "adamw_8bit"})["optim"] == "adamw_8bit"  # the stage/recipe wins
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))  # a T4
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "liger_kernel" else real_find_spec(n, *a))
    d = devices.trainer_defaults({})
    assert d["bf16"] is False and d["fp16"] is True and "tf32" not in d and "use_liger_kernel" not in d
    monkeypatch.setattr(devices, "has_cuda", lambda: False)
    d = devices.trainer_defaults({})
    assert d["use_cpu"] is True and d["bf16"] is False and "optim" not in d


def test_default_attention_on_gpu(monkeypatch):
    import importlib.util

    from llmkit import modeling

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "flash_attn" else real_find_spec(n, *a))
    assert modeling.default_attention() == "flash_attention_2"
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real_find_spec(n, *a))
    assert modeling.default_attention() == "sdpa"


def test_one_attention_rule_for_loading_the_layout_and_the_checks(monkeypatch):
    """The recipe's attn_implementation wins everywhere; without one a GPU gets default_attention()
    and a CPU transformers' default (no kwarg: SDPA), and the layout says which it was."""
    import torch
    from trl import ModelConfig

    from llmkit import modeling
    from llmkit.config import StageConfig
    from llmkit.stages import devices

    monkeypatch.setattr(devices, "has_cuda", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for requested, planned, kwarg in (("eager", "eager", "eager"), (None, "sdpa", None)):
        margs = ModelConfig(model_name_or_path="m", attn_implementation=requested)
        assert modeling.planned_attention(requested) == planned
        assert modeling.model_init_kwargs(margs).get("attn_implementation") == kwarg
        layout = devices.run_layout(StageConfig(args=[margs], explicit={}, source="test"))
        assert layout["attn_implementation"] == (planned if requested else "sdpa (transformers' default)")
    monkeypatch.setattr(devices, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(modeling, "default_attention", lambda: "flash_attention_2")
    margs = ModelConfig(model_name_or_path="m", dtype="float32")
    assert modeling.model_init_kwargs(margs)["attn_implementation"] == "flash_attention_2"
    assert devices.run_layout(StageConfig(args=[margs], explicit={}, source="test"))["attn_implementation"] == "flash_attention_2"


def test_explicit_bf16_on_a_gpu_without_it_is_one_clear_error(monkeypatch, tmp_path):
    """A recipe's `bf16: true` on a T4/V100 (faked) is refused before anything is written."""
    import torch

    from llmkit.config import LlmkitError, StageConfig
    from llmkit.stages import checks, devices

    monkeypatch.setattr(devices, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")

    class Args:  # the TrainingArguments values check_training_args reads
        learning_rate, per_device_train_batch_size, gradient_accumulation_steps = 1e-4, 1, 1
        num_train_epochs, max_steps, fp16, bf16, output_dir = 1, -1, False, True, str(tmp_path / "o")

    with pytest.raises(LlmkitError, match=r"Tesla T4, compute capability 7\.5\) has no bfloat16: remove bf16"):
        checks.check_training_args(Args(), StageConfig(args=[], explicit={}, source="recipe.yaml"))
    assert not (tmp_path / "o").exists()


def test_manifest_records_precision_and_process_layout(tmp_path, base_model, sft_data, capsys):
    out = tmp_path / "sft"
    assert llmkit("sft", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]",
                  "--eval_split_size", "0", "--max_steps", "1", "--sample_prompts", "0", "--max_length", "64",
                  "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2") == 0
    layout = json.loads((out / "manifest.json").read_text())["layout"]
    assert layout["precision"] == "fp32" and layout["world_size"] == 1 and layout["num_machines"] == 1
    assert layout["global_batch"] == 8 and layout["device"].startswith("cpu")
    assert layout["batches"] == "padding-free" and layout["packed_attention"] == "per_sequence"  # SDPA: llmkit/varlen.py
    out_text = capsys.readouterr().out
    assert "llmkit sft: fp32 on cpu" in out_text  # printed at start
    assert "batches padding-free (attention per sequence)" in out_text
    assert "SDPA on each sequence on its own" in out_text


def test_weights_load_in_the_device_s_dtype_when_the_recipe_names_none(tmp_path, base_model, monkeypatch):
    """A bf16 checkpoint (as hub models are) loads in float32 on a CPU; on a GPU: bf16 where it
    exists, else fp16 for a LoRA base and fp32 for full training (faked devices)."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from llmkit import modeling

    ckpt = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16).save_pretrained(ckpt)
    modeling.load_tokenizer(str(base_model)).save_pretrained(ckpt)
    margs = ModelConfig(model_name_or_path=str(ckpt))
    assert next(modeling.load_causal_lm(margs).parameters()).dtype == torch.float32
    assert next(modeling.load_causal_lm(dataclasses.replace(margs, dtype="bfloat16")).parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4
    assert modeling.default_weight_dtype(dataclasses.replace(margs, use_peft=True)) == torch.float16
    assert modeling.default_weight_dtype(margs) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # an A100/H100
    assert modeling.default_weight_dtype(margs) == torch.bfloat16


def test_tokenizer_reads_eval_datasets_and_its_old_name(tmp_path, corpus, capsys):
    held = corpus.parent / "heldout.jsonl"
    assert llmkit("tokenizer", "--output_dir", tmp_path / "new", "--datasets", f"[{corpus}]", "--eval_datasets", f"[{held}]",
                  "--vocab_size", "400") == 0
    assert llmkit("tokenizer", "--output_dir", tmp_path / "old", "--datasets", f"[{corpus}]", "--heldout_datasets", f"[{held}]",
                  "--vocab_size", "400") == 0
    assert "heldout_datasets is deprecated" in capsys.readouterr().out
    new, old = (json.loads((tmp_path / d / "manifest.json").read_text())["metrics"] for d in ("new", "old"))
    assert new["fertility"] == old["fertility"] > 1
    assert llmkit("tokenizer", "--output_dir", tmp_path / "both", "--datasets", f"[{corpus}]", "--eval_datasets", f"[{held}]",
                  "--heldout_datasets", f"[{held}]") == 2


def test_every_key_a_stage_docstring_names_is_a_key_of_the_stage():
    """The docstring is the --help text: its Features list names real keys, and it opens with the command."""
    import re

    from llmkit.config import stage_fields
    from llmkit.stages import STAGES, stage_module

    for name in STAGES:
        mod = stage_module(name)
        assert mod.DOC.startswith(f"`llmkit {name} --config recipes/"), name
        features = mod.DOC.split("Features (keys):", 1)[1].split("\n\n", 1)[0]
        keys = set(stage_fields(mod.CLASSES))
        named = set(re.findall(r"`([a-z_0-9]+)`", features))
        assert named and named <= keys, (name, sorted(named - keys))


def test_every_stage_declares_its_data_keys_once_in_args():
    """datasets / eval_datasets (every stage) and eval_split_size / tokenizer_name_or_path (every
    training stage) come from llmkit/stages/args.py, so their meaning and help are the same."""
    from llmkit.config import stage_fields
    from llmkit.stages import STAGES, args, stage_module

    for name in STAGES:
        fields = stage_fields(stage_module(name).CLASSES)
        shared = ("datasets", "eval_datasets") if name == "tokenizer" else ("datasets", "eval_datasets", "eval_split_size",
                                                                             "tokenizer_name_or_path")
        for key in shared:
            owner, fld, _ = fields[key]
            assert issubclass(owner, args.DatasetArgs), (name, key, owner)
            assert fld.metadata["help"] == args.DataArgs.__dataclass_fields__[key].metadata["help"]


def test_the_tokenizer_old_key_passes_the_checks_before_the_heavy_imports(tmp_path, monkeypatch):
    """heldout_datasets is still a tokenizer key for the pre-import check (the cached key list),
    while a misspelling of it is refused there."""
    from llmkit import stages
    from llmkit.config import LlmkitError

    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    stages.save_stage_keys("tokenizer", stages.stage_module("tokenizer"))
    assert {"datasets", "eval_datasets", "heldout_datasets"} <= set(stages.cached_stage_keys("tokenizer"))
    stages.precheck_stage_config("tokenizer", None, ["--heldout_datasets", "[held.jsonl]"])
    with pytest.raises(LlmkitError, match="unknown key 'heldout_dataset'. Did you mean: heldout_datasets"):
        stages.precheck_stage_config("tokenizer", None, ["--heldout_dataset", "[held.jsonl]"])
