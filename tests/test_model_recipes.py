"""The GPU recipes for today's models (recipes/<model>-es/), run on this CPU for one step each
over a random tiny model of the model's own transformers architecture and a tokenizer trained on
the project's corpus that carries the model's real chat template and special tokens (the templates
from TRL's trl/chat_templates/, or the recipe's own .jinja; nothing is downloaded).

For each recipe: sft (LoRA) and sft_qlora train a step (the LoRA targets resolve, packing and
padding-free are accepted), the run's tokenizer keeps the model's template with the EOS/pad the
model needs, TRL's own tokenization of a conversation through the template it trains with masks
everything but the answer and its end-of-turn token and renders exactly the model's own text
(default system prompt included); dpo and grpo train a step over the SFT run; eval.yaml holds only
keys `llmkit eval --recipe` knows and names stages of the pipeline; no YAML sets a precision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, llmkit, read_jsonl, write_jsonl

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"

# BSC-LT/salamandra-7b-instruct tokenizer_config.json "chat_template" at commit 912ee23 (the 2b-instruct
# ships the same), verbatim; recipes/salamandra-2b-es/chat_template.jinja is this + generation markers.
SALAMANDRA = (
    '{%- if not date_string is defined %}{%- set date_string = "2024-09-30" %}{%- endif %}{%- set system_message = '
    'messages[0].content if messages[0].role == "system" else "I am Salamandra, an AI language model developed at the '
    "Barcelona Supercomputing Centre (BSC) by the Language Technologies Unit. My knowledge base was last updated on "
    'August 2023. Today Date: "+ date_string +"\\nSoy Salamandra, un modelo lingüístico de IA desarrollado en el '
    "Barcelona Supercomputing Centre (BSC) por la Language Technologies Unit. Mi base de conocimientos se actualizó "
    "por última vez en agosto de 2023.\\nSoc Salamandra, un model de llenguatge d'IA desenvolupat al Barcelona "
    "Supercomputing Centre (BSC) per la Language Technologies Unit. La meva base de coneixement es va actualitzar per "
    "última vegada l'agost de 2023.\" -%}{%- if messages[0].role == \"system\" -%}{%- set messages = messages[1:] -%}"
    '{%- endif -%}{{ "<|im_start|>system\\n" + system_message + "<|im_end|>\\n" }}{% for message in messages %}'
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class Model:
    """What the real model's tokenizer holds, and what its fine-tuned run must hold."""

    arch: str  # transformers model_type of the real checkpoint
    template: str  # the model's own chat template (as shipped on the hub)
    bos: str | None
    eos: str  # the tokenizer's eos_token on the hub
    pad: str | None  # the tokenizer's pad_token on the hub (None: it has none)
    tokens: list[str]  # other special tokens the template uses
    end_of_turn: str  # what the model emits to end an answer: the run's EOS
    run_pad: str  # the run's pad token
    system_default: str | None  # text of the default system prompt, when the template has one
    answer_prefix: str = ""  # what the training template puts before each answer
    trl_swaps: bool = True  # TRL swaps in its *_training.jinja (else the recipe sets a template with markers)
    shape: dict = field(default_factory=dict)


TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512}
MODELS = {
    "qwen2.5-0.5b-es": Model("qwen2", (TRL_TEMPLATES / "qwen2_5.jinja").read_text(), None, "<|im_end|>", "<|endoftext|>",
                             ["<|im_start|>"], "<|im_end|>", "<|endoftext|>", "You are Qwen, created by Alibaba Cloud."),
    "qwen3-0.6b-es": Model("qwen3", (TRL_TEMPLATES / "qwen3.jinja").read_text(), None, "<|im_end|>", "<|endoftext|>",
                           ["<|im_start|>", "<think>", "</think>"], "<|im_end|>", "<|endoftext|>", None,
                           answer_prefix="<think>\n\n</think>\n\n", shape={"head_dim": 16}),
    "gemma3-1b-es": Model("gemma3_text", (TRL_TEMPLATES / "gemma3.jinja").read_text(), "<bos>", "<eos>", "<pad>",
                          ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", "<pad>", None,
                          shape={"head_dim": 16, "sliding_window": 16}),
    "llama3.2-1b-es": Model("llama", (TRL_TEMPLATES / "llama3_2.jinja").read_text(), "<|begin_of_text|>", "<|eot_id|>", None,
                            ["<|start_header_id|>", "<|end_header_id|>", "<|finetune_right_pad_id|>"], "<|eot_id|>",
                            "<|finetune_right_pad_id|>", "Cutting Knowledge Date: December 2023", trl_swaps=False),
    "salamandra-2b-es": Model("llama", SALAMANDRA, "<s>", "</s>", None, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", "</s>",
                              "I am Salamandra, an AI language model developed at the Barcelona Supercomputing Centre",
                              trl_swaps=False),
}
GPU_RECIPES = sorted(p.name for p in (REPO / "recipes").iterdir() if (p / "pipeline.yaml").is_file() and p.name != "tiny-es")
CPU = ["--attn_implementation", "eager", "--gradient_checkpointing", "false", "--max_steps", "1", "--gradient_accumulation_steps", "1"]


def test_every_gpu_recipe_is_covered():
    assert set(GPU_RECIPES) == set(MODELS), "a recipe for a model this file does not know, or a model without its recipe"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_run):
    """recipe -> a directory with a random tiny model of the recipe's architecture and the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    made = {}

    def make(name: str) -> Path:
        if name not in made:
            m = MODELS[name]
            out = tmp_path_factory.mktemp("tiny") / name
            tok = AutoTokenizer.from_pretrained(tokenizer_run)
            new = [t for t in [m.bos, m.eos, m.pad, *m.tokens] if t and t not in tok.get_vocab()]
            tok.add_special_tokens({"additional_special_tokens": new})
            tok.bos_token, tok.eos_token, tok.pad_token = m.bos, m.eos, m.pad
            tok.chat_template = m.template
            ids = {k: tok.convert_tokens_to_ids(t)
                   for k, t in (("bos_token_id", m.bos), ("eos_token_id", m.eos), ("pad_token_id", m.pad)) if t}
            cfg = AutoConfig.for_model(m.arch, vocab_size=len(tok), **TINY, **m.shape, **ids)
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
            tok.save_pretrained(out)
            made[name] = out
        return made[name]

    return make


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe_data")
    alpaca = [{"instruction": f"Escribe el número {i} en palabras.", "input": "" if i % 2 else "Con letras.", "output": f"Número {i}."}
              for i in range(10)]
    gsm = [{"question": f"Ana tiene {a} manzanas y compra {a} más. ¿Cuántas tiene?", "answer": f"{a} + {a} = {2 * a}\n#### {2 * a}"}
           for a in range(1, 7)]
    prefs = read_jsonl(REPO / "data/preferences_train.jsonl", 4)
    return {"alpaca": json.dumps([{"path": str(write_jsonl(d / "alpaca.jsonl", alpaca)), "format": "alpaca"}]),
            "gsm8k": json.dumps([{"path": str(write_jsonl(d / "gsm.jsonl", gsm)), "format": "gsm8k"}]),
            "prefs": json.dumps([str(write_jsonl(d / "prefs.jsonl", prefs))])}


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _sft(recipe: str, config: str, out: Path, model: Path, data: dict, *more: str) -> int:
    return llmkit("sft", "--config", REPO / "recipes" / recipe / config, "--output_dir", out, "--model_name_or_path", model,
                  "--datasets", data["alpaca"], "--max_length", "512", "--per_device_train_batch_size", "2", *more, *CPU)


def _trl_tokenization(tok, messages: list[dict]):
    """What TRL's SFTTrainer does with one conversation: the template it trains with (the
    tokenizer's when it has generation markers, else TRL's training variant of it) and the
    assistant mask from transformers' apply_chat_template; returns (text, masked text, template)."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tok.chat_template if has_generation_markers(tok.chat_template) else get_training_chat_template(tok)
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  chat_template=template, date_string="01 Dec 2026")
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    masked = tok.decode([i for i, keep in zip(ids, mask) if keep])
    return tok.decode(ids), masked, tok.decode([i for i, keep in zip(ids, mask) if not keep]), template


@pytest.mark.parametrize("recipe", sorted(MODELS))
def test_recipe_trains_and_masks_like_the_model(tmp_path, tiny, data, recipe):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmkit.config import read_yaml

    m = MODELS[recipe]
    model = tiny(recipe)
    sft_cfg = read_yaml(REPO / "recipes" / recipe / "sft.yaml")
    assert sft_cfg["assistant_only_loss"] is True
    if sft_cfg.get("padding_free") or sft_cfg.get("packing"):
        # on a GPU padding-free batches rely on FlashAttention to keep the packed sequences apart
        assert AutoModelForCausalLM._model_mapping[type(AutoConfig.for_model(m.arch))]._supports_flash_attn
    assert ("chat_template" not in sft_cfg) is m.trl_swaps
    qlora_cfg = read_yaml(REPO / "recipes" / recipe / "sft_qlora.yaml")
    for key in ("chat_template", "assistant_only_loss", "eos_token", "pad_token", "packing", "padding_free", "max_length"):
        assert qlora_cfg.get(key) == sft_cfg.get(key), key  # the 4-bit variant trains on the same text

    # ---- LoRA SFT, one step
    sft = tmp_path / "sft"
    assert _sft(recipe, "sft.yaml", sft, model, data,
                "--eval_split_size", "2", "--sample_prompts", "1", "--sample_max_new_tokens", "4") == 0
    metrics = _manifest(sft)["metrics"]
    assert _manifest(sft)["steps"] == 1 and metrics["trainable_parameters"] > 0
    # the answers survive max_length (Salamandra's long default system prompt)
    assert metrics["train_loss"] > 0 and metrics["eval_loss"] > 0
    targets = {t.rsplit(".", 1)[-1] for t in json.loads((sft / "adapter_config.json").read_text())["target_modules"]}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets

    # ---- the run's tokenizer: the model's template, EOS = its end of turn, its pad
    tok = AutoTokenizer.from_pretrained(sft)
    assert tok.eos_token == m.end_of_turn and tok.pad_token == m.run_pad and tok.pad_token != tok.eos_token
    if m.trl_swaps:
        assert tok.chat_template == m.template  # inference keeps exactly the model's own template
    else:
        assert tok.chat_template == (REPO / sft_cfg["chat_template"]).read_text()

    # ---- TRL's tokenization: loss on the answer and its end-of-turn token only, over the model's own text
    q, a = "¿Cuál es la capital de Chile?", "La capital de Chile es Santiago."
    single = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    text, masked, unmasked, template = _trl_tokenization(tok, single)
    assert masked.strip() == m.answer_prefix + a + m.end_of_turn
    assert q in unmasked and a not in unmasked and m.end_of_turn in unmasked  # the user turn ends with it too
    if m.system_default:
        assert m.system_default in unmasked
    own = tok.apply_chat_template(single, tokenize=False, chat_template=m.template, bos_token=m.bos, date_string="01 Dec 2026")
    assert text == own
    multi = [{"role": "system", "content": "Responde en español."}, *single, {"role": "user", "content": "¿Y de Perú?"},
             {"role": "assistant", "content": "Lima."}]
    text, masked, unmasked, _ = _trl_tokenization(tok, multi)
    assert "".join(masked.replace(m.answer_prefix, "").split()) == "".join((a + m.end_of_turn + "Lima." + m.end_of_turn).split())
    assert "Responde en español." in unmasked and "¿Y de Perú?" in unmasked
    if recipe != "qwen3-0.6b-es":  # TRL's qwen3_training keeps every turn's (empty) think block, Qwen3's drops earlier ones
        assert text == tok.apply_chat_template(multi, tokenize=False, chat_template=m.template, date_string="01 Dec 2026")
    if m.system_default and "Salamandra" in m.system_default:
        assert m.system_default not in text  # a system message replaces the default prompt, as in the original
    assert template == tok.chat_template or m.trl_swaps

    # ---- QLoRA SFT, one step (bitsandbytes' CPU 4-bit kernel adds a Linear's bias in place, which
    # autograd refuses: Qwen2's q/k/v projections have biases, so there only the config is checked)
    qlora = tmp_path / "sft_qlora"
    if m.arch == "qwen2" and not torch.cuda.is_available():
        from llmkit.config import load_stage_config
        from llmkit.stages import sft as sft_stage

        cfg = load_stage_config(sft_stage.CLASSES, REPO / "recipes" / recipe / "sft_qlora.yaml", [], sft_stage.defaults)
        assert cfg.explicit["load_in_4bit"] is True
    else:
        assert _sft(recipe, "sft_qlora.yaml", qlora, model, data,
                    "--eval_split_size", "0", "--eval_strategy", "no", "--sample_prompts", "0") == 0
        assert _manifest(qlora)["metrics"]["mode"] == "qlora-4bit" and _manifest(qlora)["steps"] == 1

    # ---- DPO and GRPO over the LoRA SFT run, one step each
    dpo = tmp_path / "dpo"
    assert llmkit("dpo", "--config", REPO / "recipes" / recipe / "dpo.yaml", "--output_dir", dpo, "--model_name_or_path", sft,
                  "--datasets", data["prefs"], "--eval_datasets", "[]", "--eval_split_size", "0", "--eval_strategy", "no",
                  "--per_device_train_batch_size", "2",
                  "--max_length", "512", *CPU) == 0
    assert _manifest(dpo)["steps"] == 1
    grpo = tmp_path / "grpo"
    assert llmkit("grpo", "--config", REPO / "recipes" / recipe / "grpo.yaml", "--output_dir", grpo, "--model_name_or_path", sft,
                  "--datasets", data["gsm8k"], "--eval_split_size", "0",
                  "--use_vllm", "false", "--num_generations", "2", "--per_device_train_batch_size", "2",
                  "--max_completion_length", "4", *CPU) == 0
    assert _manifest(grpo)["steps"] == 1


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_recipe_files_set_no_precision_and_start_with_their_command(recipe):
    from llmkit.config import read_yaml

    files = sorted((REPO / "recipes" / recipe).glob("*.yaml"))
    assert {"sft.yaml", "sft_qlora.yaml", "dpo.yaml", "grpo.yaml", "eval.yaml", "pipeline.yaml"} <= {f.name for f in files}
    for f in files:
        cfg = read_yaml(f)
        assert not {"bf16", "fp16", "dtype", "torch_dtype", "bf16_full_eval", "fp16_full_eval"} & set(cfg), f
        lines = f.read_text().splitlines()
        header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
        assert header and any(f"RECIPE={recipe}" in h or f"recipes/{recipe}" in h for h in header), f


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_eval_yaml_is_what_llmkit_eval_reads(tmp_path, monkeypatch, recipe):
    """`llmkit eval --recipe` checks every key and stage name first; with no run finished (the
    working directory is empty) it then stops with 'no finished stage', never on the file."""
    from llmkit.config import LlmkitError
    from llmkit.evaluation.runner import eval_recipe

    monkeypatch.chdir(tmp_path)
    with pytest.raises(LlmkitError, match="no finished stage"):
        eval_recipe(REPO / "recipes" / recipe)


def test_llmkit_ls_lists_the_recipes(capsys):
    assert llmkit("ls", REPO / "recipes") == 0
    out = capsys.readouterr().out
    for recipe in GPU_RECIPES:
        assert f"{recipe}: " in out and f"recipes/{recipe}/sft.yaml" in out
