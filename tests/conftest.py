"""Shared fixtures: a tokenizer trained on the project's own corpus and a tiny random Llama,
both built once per session in a temporary directory.  Nothing touches the network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
TINY_MODEL = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path, n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n] if n else rows


def llmkit(*argv: str) -> int:
    """Run the CLI in-process, as `llmkit ...` would."""
    from llmkit.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A 600-paragraph slice of the shipped corpus (fast to train on)."""
    d = tmp_path_factory.mktemp("corpus")
    write_jsonl(d / "heldout.jsonl", read_jsonl(DATA / "corpus_heldout.jsonl", 100))
    return write_jsonl(d / "train.jsonl", read_jsonl(DATA / "corpus_train.jsonl", 600))


@pytest.fixture(scope="session")
def tokenizer_run(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    rc = llmkit(
        "tokenizer", "--output_dir", out, "--datasets", f"[{corpus}]",
        "--eval_datasets", f"[{corpus.parent / 'heldout.jsonl'}]", "--vocab_size", "600",
    )
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, tokenizer_run) -> Path:
    """A random tiny Llama saved as a plain HF directory with the trained tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.modeling import new_model_config

    out = tmp_path_factory.mktemp("base") / "model"
    tok = AutoTokenizer.from_pretrained(tokenizer_run)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(new_model_config(TINY_MODEL, tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sft")
    train = write_jsonl(d / "train.jsonl", read_jsonl(DATA / "sft_train.jsonl", 400))
    held = write_jsonl(d / "heldout.jsonl", read_jsonl(DATA / "sft_heldout.jsonl", 40))
    return train, held


@pytest.fixture(scope="session")
def peaked_policy(tmp_path_factory, base_model) -> Path:
    """The tiny random Llama with its output layer scaled up, so that, like a trained model, it
    puts most of its mass on a few tokens per context (entropy ~2 nats instead of ~6)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("peaked_policy") / "policy"
    model = AutoModelForCausalLM.from_pretrained(base_model)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)
    return out


def frac_a_reward(tokenizer_dir: Path):
    """Share of completion tokens whose text contains 'a' (the stop token counts as one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    targets = {i for s, i in tok.get_vocab().items() if "a" in s}

    def frac_a(prompts=None, completions=None, completion_ids=None, **kwargs):
        return [sum(x in targets for x in ids) / max(len(ids), 1) for ids in completion_ids]

    return frac_a


# vLLM's CPU attention needs head_dim in {32, 64, 80, ...}: TINY_MODEL (head_dim 16) cannot be
# served, this one (64 / 2 heads) can.
VLLM_TINY_MODEL = {**TINY_MODEL, "num_attention_heads": 2, "num_key_value_heads": 2}


@pytest.fixture(scope="session")
def vllm_base(tmp_path_factory, tokenizer_run) -> Path:
    """A random tiny Llama vLLM can load, with a sharpened output layer (like a trained model,
    few near-ties, so greedy decoding is stable across engines)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.modeling import new_model_config

    out = tmp_path_factory.mktemp("vllm_base") / "base"
    tok = AutoTokenizer.from_pretrained(tokenizer_run)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(new_model_config(VLLM_TINY_MODEL, tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory, vllm_base, sft_data) -> dict[str, Path]:
    """Two LoRA SFT runs over vllm_base (a few large steps, so they differ from the base)."""
    train, held = sft_data
    d = tmp_path_factory.mktemp("lora_runs")
    runs = {}
    for name, lr in (("sft", "5e-3"), ("sft2", "2e-2")):
        runs[name] = d / name
        rc = llmkit("sft", "--output_dir", runs[name], "--model_name_or_path", vllm_base, "--datasets", f"[{train}]",
                    "--max_length", "128", "--per_device_train_batch_size", "8", "--max_steps", "6",
                    "--learning_rate", lr, "--use_peft", "--lora_r", "8", "--lora_alpha", "16",
                    "--eval_strategy", "no", "--eval_split_size", "0",
                    "--sample_prompts", "0", "--logging_steps", "2")
        assert rc == 0
    return runs


@pytest.fixture(scope="session")
def stacked_prefs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("stacked_prefs")
    rows = []
    for a in range(10):
        for b in range(10):
            q, good, bad = f"¿Cuánto es {a} más {b}?", f"La respuesta es {a + b}.", f"The answer is {a + b}."
            rows.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}]})
    return write_jsonl(d / "train.jsonl", rows[:80]), write_jsonl(d / "held.jsonl", rows[80:])


@pytest.fixture(scope="session")
def stacked_dpo(tmp_path_factory, vllm_base, lora_runs, stacked_prefs) -> Path:
    """LoRA DPO over the LoRA SFT run, with other targets, rank and alpha than the SFT adapter."""
    out = tmp_path_factory.mktemp("stacked") / "dpo"
    rc = llmkit("dpo", "--output_dir", out, "--model_name_or_path", lora_runs["sft"], "--datasets", f"[{stacked_prefs[0]}]",
                "--eval_datasets", f"[{stacked_prefs[1]}]", "--max_steps", "8", "--per_device_train_batch_size", "8",
                "--learning_rate", "2e-2", "--max_length", "64", "--logging_steps", "4", "--use_peft", "--lora_r", "4",
                "--lora_alpha", "32", "--lora_target_modules", "[q_proj, k_proj, v_proj, o_proj, down_proj]")
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def hub_standin():
    """A local stand-in of the Hugging Face Hub (tests/hub_standin.py): an HTTP server on
    127.0.0.1 with a free port, empty; tests add repos in the hub's layout and point
    ``HF_ENDPOINT`` at ``hub_standin.url``.  It stops at the end of the session (or by itself
    after 15 idle minutes)."""
    from hub_standin import HubStandin

    with HubStandin() as hub:
        yield hub
