"""Batches without padding never let sequences attend to each other (llmkit/batching.py).

For each method llmkit enables by default or on a device, every sequence's logits in the batch
equal its logits alone (1e-5, float32, CPU), and the batch's loss is the per-token mean of the
sequences' own losses:
  - padding-free packing: TRL's padding-free collator (one row, per-sequence position_ids, no
    attention mask), under SDPA and eager attention (transformers builds a block-diagonal
    causal mask from the position_ids), and the rows TRL's SFTTrainer packs with bfd;
  - length-grouped batches: padded rows with an attention mask, and the sampler itself (every
    row once per epoch, batches as before, less padding, the same order on resume), built into
    real SFT and DPO trainers.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
from pathlib import Path

import pytest
import torch

from llmkit import batching

LENGTHS = (7, 19, 3, 12, 30)


def tiny_llama(attn: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    return model.eval()


@contextlib.contextmanager
def sdpa_lengths(monkeypatch):
    """The query length of every torch SDPA call made inside the block (the forward only: the
    spy is removed before the caller's backward)."""
    seen: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *a, **k):
        seen.append(q.shape[-2])
        return real(q, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    try:
        yield seen
    finally:
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", real)


def sequences(lengths=LENGTHS) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, 97, (n,), generator=g).tolist() for n in lengths]


def alone(model, seq: list[int]):
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0]


def token_losses(model, seq: list[int]) -> torch.Tensor:
    """Cross-entropy of each predicted token of ``seq`` when it is the model's only input."""
    logits = alone(model, seq)
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="none")


@pytest.mark.parametrize("attn", ["sdpa", "eager", "llmkit_sdpa_varlen"])
def test_padding_free_batch_keeps_sequences_apart(attn):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from llmkit import varlen

    varlen.register()
    model = tiny_llama(attn)
    seqs = sequences()
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in seqs])
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(LENGTHS))
    with torch.no_grad():  # use_cache=False, as TRL's SFTTrainer.compute_loss passes it (see the next test)
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    start = 0
    for s in seqs:
        got = out.logits[0, start : start + len(s)]
        torch.testing.assert_close(got, alone(model, s), atol=1e-5, rtol=1e-5)
        start += len(s)
    # the loss of the packed row: every sequence's first token carries no label (nothing before
    # it in its own sequence), so it is the per-token mean over all sequences' own tokens
    with torch.no_grad():
        packed_loss = model(**batch, use_cache=False).loss
    want = torch.cat([token_losses(model, s) for s in seqs]).mean()
    torch.testing.assert_close(packed_loss, want, atol=1e-5, rtol=1e-5)


def test_packed_row_mixes_sequences_without_position_ids_or_with_a_cache():
    """The check above can fail: the same packed row with plain positions lets later sequences
    attend to earlier ones, and so does a forward with the KV cache on (the model's default):
    transformers 5.19 looks for packed position_ids only when there is no cache
    (masking_utils._preprocess_mask_arguments), so padding-free batches need use_cache=False."""
    model = tiny_llama("sdpa")
    seqs = sequences()
    flat = torch.tensor([sum(seqs, [])])
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    span = slice(LENGTHS[0], LENGTHS[0] + LENGTHS[1])
    with torch.no_grad():
        plain = model(input_ids=flat, use_cache=False).logits[0, span]
        cached = model(input_ids=flat, position_ids=positions).logits[0, span]
        apart = model(input_ids=flat, position_ids=positions, use_cache=False).logits[0, span]
    own = alone(model, seqs[1])
    assert (plain - own).abs().max() > 1e-3
    assert (cached - own).abs().max() > 1e-3
    torch.testing.assert_close(apart, own, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_grouped_batch_keeps_sequences_apart(attn):
    """A length-grouped batch is an ordinary right-padded batch: the attention mask keeps rows
    apart, padding carries no loss, and the loss is the per-token mean of the rows."""
    model = tiny_llama(attn)
    seqs = sequences((11, 12, 12, 9))
    width = max(map(len, seqs))
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(out.logits[i, : len(s)], alone(model, s), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, torch.cat([token_losses(model, s) for s in seqs]).mean(), atol=1e-5, rtol=1e-5)


def test_per_sequence_attention_runs_each_sequence_alone_with_the_same_gradients(monkeypatch):
    """llmkit/varlen.py: SDPA is called once per sequence of the padding-free row (not once over
    the whole row), and the loss and every gradient equal the dense block-diagonal mask's; a
    padded batch (no sequence boundaries) goes to plain SDPA with its mask."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from llmkit import varlen

    seqs = sequences()
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in seqs])
    grads, losses = {}, {}
    for attn in ("sdpa", "per_sequence"):
        model = tiny_llama("sdpa").train()
        if attn == "per_sequence":
            assert varlen.use(model) == "sdpa" and model.config._attn_implementation == varlen.ATTENTION
        with sdpa_lengths(monkeypatch) as lengths:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        losses[attn], grads[attn] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
        layers = model.config.num_hidden_layers
        assert lengths == ([sum(LENGTHS)] * layers if attn == "sdpa" else list(LENGTHS) * layers)
    torch.testing.assert_close(losses["per_sequence"], losses["sdpa"], atol=1e-6, rtol=1e-5)
    for name, g in grads["sdpa"].items():
        torch.testing.assert_close(grads["per_sequence"][name], g, atol=1e-6, rtol=1e-4, msg=name)
    # a padded batch with the implementation still in place: SDPA with the padding mask
    seqs = sequences((11, 5))
    ids = torch.zeros((2, 11), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, q in enumerate(seqs):
        ids[i, : len(q)], mask[i, : len(q)] = torch.tensor(q), 1
    with torch.no_grad():
        out = model.eval()(input_ids=ids, attention_mask=mask).logits
    for i, q in enumerate(seqs):
        torch.testing.assert_close(out[i, : len(q)], alone(model, q), atol=1e-5, rtol=1e-5)


def test_packed_attention_choice_per_implementation():
    assert batching.resolve_packed_attention("auto", "sdpa (transformers' default)") == "per_sequence"
    assert batching.resolve_packed_attention("auto", None) == "per_sequence"
    assert batching.resolve_packed_attention("auto", "flash_attention_2") == "kernel_varlen"
    assert batching.resolve_packed_attention("mask", "sdpa") == "mask"
    assert batching.resolve_packed_attention("auto", "eager") == "mask"  # eager is the user's choice (e.g. softcapping)
    with pytest.raises(ValueError, match="attn_implementation is eager"):
        batching.resolve_packed_attention("per_sequence", "eager")
    with pytest.raises(ValueError, match="must be one of auto, per_sequence, mask"):
        batching.resolve_packed_attention("varlen", "sdpa")


# --------------------------------------------------------------------------- the sampler

def test_sampler_covers_every_row_once_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 250) for _ in range(1003)]
    s = batching.LengthGroupedSampler(lengths, batch_size=8, seed=42)
    order = list(iter(s))
    assert sorted(order) == list(range(len(lengths)))  # each row once: same rows and steps per epoch as random
    batches = s.batches()
    assert len(batches) == -(-len(lengths) // 8) and all(len(b) == 8 for b in batches[:-1])
    shuffled = random.Random(1).sample(range(len(lengths)), len(lengths))
    grouped, plain = batching.padding_fraction(lengths, order, 8), batching.padding_fraction(lengths, shuffled, 8)
    assert grouped < 0.1 < 0.3 < plain
    # batches of long and short rows alternate over the epoch (no longest-first curriculum)
    firsts = [max(lengths[i] for i in b) for b in batches[:-1]]
    half = len(firsts) // 2
    assert abs(sum(firsts[:half]) / half - sum(firsts[half:]) / (len(firsts) - half)) < 25


def test_sampler_order_depends_on_seed_and_epoch_only():
    lengths = list(range(1, 300))
    a, b = batching.LengthGroupedSampler(lengths, 4, seed=7), batching.LengthGroupedSampler(lengths, 4, seed=7)
    torch.manual_seed(123)  # the global RNG (which a resumed run restores differently) plays no part
    first = list(iter(a))
    torch.manual_seed(999)
    assert list(iter(b)) == first
    a.set_epoch(1)
    assert list(iter(a)) != first and sorted(iter(a)) == sorted(first)
    assert list(iter(batching.LengthGroupedSampler(lengths, 4, seed=8))) != first


# --------------------------------------------------------------------------- inside the real trainers

def _epoch_batches(trainer):
    return list(trainer.get_train_dataloader())


def test_sft_trainer_grouped_batches(base_model, sft_data, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(base_model)
    ds = load_dataset("json", data_files=str(sft_data[0]), split="train")
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_length=64, use_cpu=True, bf16=False,
                     report_to="none", train_sampling_strategy="group_by_length", seed=3)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base_model), args=args, train_dataset=ds, processing_class=tok)
    plain = _epoch_batches(trainer)  # before install: transformers' own sampler
    info = batching.install(trainer, args, stage="sft")
    grouped = _epoch_batches(trainer)
    assert len(grouped) == len(plain) == -(-len(trainer.train_dataset) // 8)

    def pad(batches):
        return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)

    assert pad(grouped) < 0.5 * info["padding_random"]
    assert pad(grouped) == pytest.approx(info["padding_grouped"], abs=1e-4)
    # same rows: the label tokens of the epoch are the same multiset
    def tokens(batches):
        return sorted(t for b in batches for t in b["labels"][b["labels"] != -100].tolist())

    assert tokens(grouped) == tokens(plain)
    # evaluation keeps sequential batches
    from torch.utils.data import SequentialSampler

    assert isinstance(trainer._get_eval_sampler(ds), SequentialSampler)

    # token weights: each step's summed token losses are divided by the epoch's mean loss tokens
    # per batch, so the mean of the steps' losses over an epoch is the per-token mean of the epoch
    # (with TRL's own divisor, a step of short rows would weigh its tokens more)
    counts = [int(b["labels"][..., 1:].ne(-100).sum()) for b in grouped]
    assert info["loss_tokens_per_batch"] == pytest.approx(sum(counts) / len(counts), abs=0.05)
    model = trainer.model.train()  # dropout is 0 in the tiny model: train mode changes no logits
    step_losses, token_sum = [], 0.0
    with torch.no_grad():
        for b in grouped[:12]:
            n = trainer._get_num_items_in_batch([b], torch.device("cpu"))
            step_losses.append(float(trainer.compute_loss(model, dict(b), num_items_in_batch=n)))
            own = float(trainer.compute_loss(model, dict(b)))  # TRL's divisor: this batch's own loss tokens
            token_sum += own * int(b["labels"][..., 1:].ne(-100).sum())
    per_token = token_sum / sum(counts[:12])
    assert sum(step_losses) / 12 == pytest.approx(per_token * sum(counts[:12]) / (12 * info["loss_tokens_per_batch"]), rel=1e-5)


def test_dpo_trainer_grouped_batches(base_model, tmp_path):
    from conftest import DATA, read_jsonl, write_jsonl
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = write_jsonl(tmp_path / "prefs.jsonl", read_jsonl(DATA / "preferences_train.jsonl", 240))
    tok = AutoTokenizer.from_pretrained(base_model)
    ds = load_dataset("json", data_files=str(data), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_length=64, use_cpu=True, bf16=False,
                     report_to="none", train_sampling_strategy="group_by_length", seed=3)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    ref = AutoModelForCausalLM.from_pretrained(base_model)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    info = batching.install(trainer, args, stage="dpo")
    grouped = _epoch_batches(trainer)
    assert len(grouped) == -(-len(trainer.train_dataset) // 8)  # TRL drops pairs whose prompt fills max_length
    real = sum(int(b["attention_mask"].sum()) for b in grouped)
    total = sum(b["attention_mask"].numel() for b in grouped)
    assert 1 - real / total == pytest.approx(info["padding_grouped"], abs=1e-4)
    assert info["padding_grouped"] < 0.6 * info["padding_random"]


def test_sft_bfd_packed_rows_keep_sequences_apart(base_model, sft_data, tmp_path):
    """The GPU default (bfd packing, padding-free): what TRL's SFTTrainer feeds the model. Under
    SDPA on a CPU every packed sequence's logits equal its own; the batch shrinks by the packing
    ratio so a step holds about as many examples as before."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(base_model)
    ds = load_dataset("json", data_files=str(sft_data[0]), split="train").select(range(120))
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_length=128, use_cpu=True, bf16=False,
                     report_to="none", packing=True, packing_strategy="bfd", seed=3)
    model = AutoModelForCausalLM.from_pretrained(base_model, attn_implementation="sdpa").eval()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    info = batching.install(trainer, args, rows_before=len(ds), stage="sft")
    assert info["packed_rows"] < len(ds) and 1 <= info["packed_batch"] < 8
    steps = len(trainer.get_train_dataloader())
    assert abs(steps - len(ds) / 8) <= 0.5 * len(ds) / 8
    batch = next(iter(trainer.get_train_dataloader()))
    pos = batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
    assert len(starts) > 3  # several sequences in the packed batch
    with torch.no_grad():  # through TRL's own compute_loss (which turns the cache off)
        loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    out = outputs.logits[0]
    for a, b in zip(starts[:-1], starts[1:]):
        seq = batch["input_ids"][0, a:b].tolist()
        torch.testing.assert_close(out[a:b], alone(model, seq), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_grouped_batches_resume_after_sigterm(tmp_path, base_model, sft_data, stage):
    """llmkit sft/dpo with length-grouped batches, stopped by SIGTERM and run again: the loss at
    the last step equals an uninterrupted run's (test_resume.py's tolerance). 40 rows in batches
    of 4 and 24 steps: the run crosses two epoch boundaries, so each epoch's order must come
    back from the seed and the epoch alone."""
    from conftest import DATA, llmkit, read_jsonl, write_jsonl
    from test_resume import TOL, _loss_at, checkpoints, start, trl_stage_args, wait_for

    src = sft_data[0] if stage == "sft" else DATA / "preferences_train.jsonl"
    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(src, 40))
    steps = 24

    def args(out):
        return [*trl_stage_args(stage, out, base_model, data, steps), "--train_sampling_strategy", "group_by_length"]

    ref = tmp_path / "ref"
    assert llmkit(*args(ref)) == 0
    out = tmp_path / "run"
    metrics = Path(str(out) + ".partial") / "metrics.jsonl"
    proc = start(args(out), tmp_path)
    wait_for(lambda: metrics.is_file() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= 8, proc, timeout=300)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, text[-2000:]
    assert checkpoints(out) and "length-grouped batches" in text
    assert llmkit(*args(out)) == 0
    assert abs(_loss_at(out, steps) - _loss_at(ref, steps)) < TOL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"]["batches"] == "length-grouped"
    assert manifest["metrics"]["padding_grouped"] < manifest["metrics"]["padding_random"]


# --------------------------------------------------------------------------- the choice per device

def test_defaults_per_stage(monkeypatch):
    """SFT and DPO: padding-free batches on every device; a recipe's own choice wins."""
    monkeypatch.setattr(batching, "DEFAULT_ON", True)
    assert batching.defaults("sft", {}) == batching.defaults("dpo", {}) == {"padding_free": True}
    for key in ("packing", "padding_free", "train_sampling_strategy"):
        assert batching.defaults("sft", {key: False}) == batching.defaults("dpo", {key: False}) == {}
    monkeypatch.setattr(batching, "DEFAULT_ON", False)
    assert batching.defaults("sft", {}) == batching.defaults("dpo", {}) == {}


def test_sft_padding_free_batches_equal_padded_batches(base_model, sft_data, tmp_path):
    """llmkit's SFT default: TRL's padding-free collation without packing (batching.prepare /
    install). The same rows per step and steps per epoch as padded batches; no padding; every
    sequence's logits equal its own; the batch's loss equals the padded batch's (both the mean
    over the batch's loss tokens)."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(base_model)
    ds = load_dataset("json", data_files=str(sft_data[0]), split="train").select(range(64))
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_length=64, use_cpu=True, bf16=False,
                     report_to="none", padding_free=True, seed=3)
    batching.prepare(args)  # TRL alone refuses padding_free without packing when max_length is set
    model = AutoModelForCausalLM.from_pretrained(base_model, attn_implementation="sdpa").eval()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    info = batching.install(trainer, args, len(ds), "sft")
    assert args.padding_free and batching.describe(args)["batches"] == "padding-free"
    # with SDPA the default runs each sequence's attention on its own (the logits below are checked under it)
    assert info["packed_attention"] == "per_sequence" and model.config._attn_implementation == "llmkit_sdpa_varlen"
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 8 and all("attention_mask" not in b and b["input_ids"].shape[0] == 1 for b in batches)
    b = batches[0]
    pos = b["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
    assert len(starts) == 9  # 8 rows, no padding tail
    seqs = [b["input_ids"][0, x:y].tolist() for x, y in zip(starts[:-1], starts[1:])]
    with torch.no_grad():
        loss, out = trainer.compute_loss(model, dict(b), return_outputs=True)
    for (x, y), seq in zip(zip(starts[:-1], starts[1:]), seqs):
        torch.testing.assert_close(out.logits[0, x:y], alone(model, seq), atol=1e-5, rtol=1e-5)
    # the same rows padded (TRL's default collation), labels as the padding-free row has them
    labels = [b["labels"][0, x:y].tolist() for x, y in zip(starts[:-1], starts[1:])]
    trainer.data_collator.padding_free = False
    padded = trainer.data_collator([{"input_ids": s, "labels": lab} for s, lab in zip(seqs, labels)])
    trainer.data_collator.padding_free = True
    with torch.no_grad():
        padded_loss = trainer.compute_loss(model, dict(padded))
    torch.testing.assert_close(loss, padded_loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("peft", [False, True], ids=["full-ref-copy", "lora-adapter-off-ref"])
def test_padding_free_dpo_equals_padded_dpo(base_model, tmp_path, monkeypatch, peft):
    """llmkit's DPO default: TRL's padded [chosen; rejected] batch, run through the policy and the
    reference as one row of sequences (varlen.pack_fused_forward). TRL's own DPO loss, its reward
    metrics and every gradient equal the padded forward's; SDPA runs once per sequence per layer."""
    from conftest import DATA, read_jsonl, write_jsonl
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = write_jsonl(tmp_path / "prefs.jsonl", read_jsonl(DATA / "preferences_train.jsonl", 24))
    tok = AutoTokenizer.from_pretrained(base_model)
    ds = load_dataset("json", data_files=str(data), split="train")
    results = {}
    for padding_free in (False, True):
        args = DPOConfig(output_dir=str(tmp_path / f"out{padding_free}"), per_device_train_batch_size=4, max_length=64,
                         use_cpu=True, bf16=False, report_to="none", padding_free=padding_free, seed=3)
        batching.prepare(args)
        assert not args.padding_free  # hidden from TRL, which would warn and pad
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base_model, attn_implementation="sdpa")
        ref = None if peft else AutoModelForCausalLM.from_pretrained(base_model, attn_implementation="sdpa")
        lora = (LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
                if peft else None)  # CAUSAL_LM as the stages build it: PEFT then passes inputs_embeds=None, return_dict=None, ...
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
        info = batching.install(trainer, args, stage="dpo")
        assert (info.get("packed_attention") == "per_sequence") == padding_free and args.padding_free == padding_free
        batch = next(iter(trainer.get_train_dataloader()))
        lengths = batch["attention_mask"].sum(1).tolist()
        assert len(set(lengths)) > 1  # the padded batch really is padded
        trainer.model.train()
        with sdpa_lengths(monkeypatch) as seen:
            loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        layers = model.config.num_hidden_layers
        width = batch["input_ids"].shape[1]
        # policy and reference: one call per layer over the padded width, or one per sequence and layer
        if padding_free:
            assert sorted(seen) == sorted(lengths * 2 * layers)
        else:
            assert seen == [width] * (2 * layers)
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[padding_free] = loss.detach(), metrics, grads
    (l0, m0, g0), (l1, m1, g1) = results[False], results[True]
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert m1[key] == pytest.approx(m0[key], abs=1e-4), key
    assert g0 and set(g0) == set(g1)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_pack_fused_forward_leaves_other_calls_alone():
    """Plain forwards (no fused_lm_head: generation, llmkit's own scoring) and a model TRL did not
    patch are left as they are; a row with a hole in its mask is refused, not mixed."""
    from trl.trainer.utils import add_fused_lm_head

    from llmkit import varlen

    model = tiny_llama("sdpa")
    assert varlen.pack_fused_forward(model) is False  # no fused forward on the instance
    add_fused_lm_head(model)
    assert varlen.pack_fused_forward(model) and varlen.pack_fused_forward(model)  # idempotent
    seqs = sequences((6, 4))
    ids = torch.zeros((2, 6), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, q in enumerate(seqs):
        ids[i, : len(q)], mask[i, : len(q)] = torch.tensor(q), 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(logits[1, :4], alone(model, seqs[1]), atol=1e-5, rtol=1e-5)
        left = torch.zeros_like(ids)
        left[0], left[1, 2:] = ids[0], torch.tensor(seqs[1])
        lmask = torch.zeros_like(ids)
        lmask[0], lmask[1, 2:] = 1, 1
        labels = left.masked_fill(lmask == 0, -100)
        packed = model(input_ids=left, attention_mask=lmask, labels=labels, fused_lm_head=True).log_probs
        want = torch.log_softmax(alone(model, seqs[1]), -1)[:-1].gather(-1, torch.tensor(seqs[1])[1:, None])[:, 0]
        torch.testing.assert_close(packed[1, 2:], want, atol=1e-5, rtol=1e-5)  # left padding works too
        hole = mask.clone()
        hole[0, 2] = 0
        with pytest.raises(ValueError, match="side by side"):
            model(input_ids=ids, attention_mask=hole, labels=ids, fused_lm_head=True)
