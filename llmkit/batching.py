"""Batches that carry (almost) no padding, for the SFT and DPO stages.

How each method keeps sequences apart, and what it changes:

  padding-free batches  (`padding_free: true`; llmkit's SFT and DPO default on every device)
      The rows of a batch are the rows random batches have (same sampler, rows per step, steps
      per epoch, truncation at max_length); TRL's own padding-free collation puts them in one
      row with per-sequence position_ids (and cu_seq_lens) and no padding. FlashAttention's
      varlen kernel keeps the sequences apart on a GPU; with SDPA llmkit runs the attention of
      each sequence on its own (`packed_attention: auto`, llmkit/varlen.py). With eager
      attention, or `packed_attention: mask`, transformers 5.19 builds a block-diagonal causal
      mask from the position_ids (masking_utils.find_packed_sequence_indices; only without a KV
      cache, and TRL's compute_loss turns the cache off), which is correct but dense: the
      flattened row then costs attention over its whole length. The step's loss is the padded batch's (TRL's mean
      over the batch's loss tokens; tests/test_packing.py: equal to 1e-5), so training follows
      the padded run (tiny-es held-out loss at steps 50 and 100: equal to 4 decimals).
      TRL 1.16 refuses padding_free without packing when max_length is set, although it then
      truncates rows to max_length: `prepare` hides the key from TRL, `install` turns TRL's
      collation on.

  packing  (`packing: true`, `packing_strategy: bfd`, `eval_packing: false`; not a default)
      TRL packs whole rows into rows of max_length (padding-free as above). A packed row holds
      several examples, so llmkit shrinks the per-device batch by the packing ratio (packed rows
      / rows) to keep about the same examples per step (tiny-es: 3000 rows in 713, batch 16 ->
      4, 716 steps in 4 epochs instead of 752). The rounding makes the global batch depend on
      the number of processes, which is why padding-free batches are the default instead.

  length-grouped batches  (`train_sampling_strategy: group_by_length`; not a default)
      Each epoch the rows are shuffled (seed + epoch), cut into mega-batches of
      MEGABATCH_BATCHES batches, sorted by length inside each mega-batch, cut into batches,
      and the batches are shuffled again (transformers' LengthGroupedSampler orders every
      mega-batch longest first and cannot read DPO's columns). Every row is still one padded
      row: the attention mask keeps sequences apart with any attention implementation. Rows
      per step and optimizer steps per epoch are unchanged; for SFT each step's summed token
      losses are divided by the epoch's mean loss tokens per batch (token_weights), so every
      token weighs the same as in random batches. With several processes one group spans the
      per-device batches of a global step. Resume: the order depends on seed and epoch only.
      Not the SFT default: on tiny-es its batches of one length are batches of one kind
      of task, and the held-out loss after 100 steps was 8 % above random batches' (1.553 vs
      1.433; with token weights 1.537; mega-batches of 4 batches 1.465), bfd packing's 0.7 % (1.443).

DPO: TRL 1.16 turned DPO's padding_free off ("temporarily unavailable"). llmkit's DPO default is
padding-free anyway: TRL collates its random batches padded as always ([chosen; rejected], both
halves padded to one width), and the forward TRL calls for the policy and the reference (its
fused LM head, which returns per-token log-probabilities) is wrapped so that the batch's
sequences go through the model as one row with their own position_ids and boundaries; the
log-probabilities come back in the padded shape, so TRL's loss code runs unchanged
(varlen.pack_fused_forward; tests/test_packing.py: equal to the padded forward to 1e-5, with
gradients). Length grouping (`train_sampling_strategy: group_by_length`, `padding_free: false`)
is the padded alternative: the width of a pair is its longer sequence, and the DPO loss is a mean
over pairs, so grouping changes no weights.
"""

from __future__ import annotations

import random
from typing import Any

# llmkit's batching defaults (below) are on; False: TRL's (random, padded batches) unless a recipe sets them
DEFAULT_ON = True
# batches per mega-batch: rows are sorted by length within MEGABATCH_BATCHES * batch rows
MEGABATCH_BATCHES = 50
GROUP = "group_by_length"


def defaults(stage: str, explicit: dict[str, Any]) -> dict[str, Any]:
    """llmkit's batching defaults for ``stage`` ("sft" or "dpo"); the recipe's keys win.

    SFT: padding-free batches on every device and attention implementation (FlashAttention
    varlen on a GPU, attention per sequence with SDPA, the block-diagonal mask with eager; see
    the module doc for why not length grouping or packing). DPO: padding-free batches too (TRL 1.16 turned its own off; llmkit runs
    the policy's and the reference's forward padding-free, see the module doc). A recipe that sets
    packing, padding_free or train_sampling_strategy itself gets exactly what it set."""
    if not DEFAULT_ON or any(k in explicit for k in ("packing", "padding_free", "train_sampling_strategy")):
        return {}
    return {"padding_free": True}


PACKED_ATTENTION = ("auto", "per_sequence", "mask")


def resolve_packed_attention(choice: str, attn: str | None) -> str:
    """How a padding-free batch's sequences are kept apart, from the ``packed_attention`` key and
    the model's attention implementation: "per_sequence" (SDPA on each sequence, llmkit/varlen.py),
    "kernel_varlen" (FlashAttention reads the boundaries itself) or "mask" (transformers' dense
    block-diagonal mask: SDPA by request, eager and other implementations)."""
    attn = (attn or "sdpa").split(" ")[0]
    if choice not in PACKED_ATTENTION:
        raise ValueError(f"packed_attention must be one of {', '.join(PACKED_ATTENTION)}, got {choice!r}")
    if attn.startswith("flash_attention"):
        return "kernel_varlen"
    if choice == "mask":
        return "mask"
    if attn == "sdpa":
        return "per_sequence"
    if choice == "per_sequence":
        raise ValueError(f"packed_attention: per_sequence runs SDPA on each sequence, but attn_implementation is {attn}: "
                         "set attn_implementation: sdpa, or packed_attention: auto or mask")
    return "mask"


def describe(targs) -> dict[str, Any]:
    """The batching levers of an SFT or DPO run ({} for other stages), for the layout printed at
    start and kept in the manifest."""
    if type(targs).__name__ not in ("SFTConfig", "DPOConfig"):
        return {}
    out: dict[str, Any] = {"train_sampling_strategy": str(getattr(targs, "train_sampling_strategy", "random"))}
    for key in ("packing", "packing_strategy", "padding_free", "torch_compile", "use_liger_kernel"):
        if hasattr(targs, key):
            out[key] = getattr(targs, key)
    if not out.get("packing"):
        out.pop("packing_strategy", None)
    out["batches"] = ("padding-free packed" if out.get("packing") and out.get("packing_strategy") in ("bfd", "bfd_split")
                      else "padding-free" if out.get("padding_free")
                      else "length-grouped" if out["train_sampling_strategy"] == GROUP else "random, padded")
    return out


# --------------------------------------------------------------------------- lengths

def row_lengths(dataset, max_length: int | None = None) -> tuple[list[int], list[float]]:
    """(width, real tokens) of each row as the collator pads it, ``max_length`` capping both as
    TRL truncates. SFT: ``input_ids``, both the same. DPO: the pair's longer sequence (prompt +
    chosen or prompt + rejected: TRL pads both halves of the batch to one width), and the mean
    of the two sequences' tokens (a pair is two rows of that width)."""
    import pyarrow.compute as pc

    cols = set(dataset.column_names)
    tbl = dataset.with_format("arrow")[:]  # honours a shuffled/selected dataset's indices
    cap = max_length or 10**9
    if "input_ids" in cols:
        width = [min(int(x), cap) for x in pc.list_value_length(tbl["input_ids"]).to_pylist()]
        return width, [float(x) for x in width]
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= cols:
        p, c, r = (pc.list_value_length(tbl[k]).to_pylist() for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
        width = [min(a + max(b, d), cap) for a, b, d in zip(p, c, r)]
        return width, [(min(a + b, cap) + min(a + d, cap)) / 2 for a, b, d in zip(p, c, r)]
    raise ValueError(f"no token columns to group by length in {sorted(cols)}")


def padding_fraction(width: list[int], order: list[int], batch_size: int, real: list[float] | None = None) -> float:
    """Share of padded positions when rows are batched in ``order`` and padded to each batch's
    widest (``real``: tokens of each row, default its width)."""
    real = real if real is not None else width
    tokens = positions = 0.0
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        tokens += sum(real[j] for j in chunk)
        positions += max(width[j] for j in chunk) * len(chunk)
    return 1 - tokens / positions if positions else 0.0


def _random_padding(width: list[int], real: list[float], seed: int, batch_size: int) -> float:
    """The padding share of random batches (the order TRL's sampler would draw with ``seed``)."""
    order = random.Random(seed).sample(range(len(width)), len(width))
    return round(padding_fraction(width, order, batch_size, real), 4)


# --------------------------------------------------------------------------- the sampler

class LengthGroupedSampler:
    """Indices in batches of similar length, in a random order of batches (see the module doc).

    A plain iterable of indices with ``set_epoch`` (transformers calls it every epoch): the order
    is a function of ``seed`` and the epoch only, so a resumed run sees the same batches."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, megabatch_batches: int | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.megabatch = max(1, megabatch_batches or MEGABATCH_BATCHES)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.megabatch * self.batch_size
        full, partial = [], []
        for m in range(0, len(perm), size):
            mega = sorted(perm[m : m + size], key=lambda i: self.lengths[i], reverse=True)
            for b in range(0, len(mega), self.batch_size):
                (full if len(mega[b : b + self.batch_size]) == self.batch_size else partial).append(mega[b : b + self.batch_size])
        order = torch.randperm(len(full), generator=g).tolist()
        # an incomplete batch only at the very end, so that the DataLoader's batches are exactly these groups
        return [full[i] for i in order] + partial

    def __iter__(self):
        return iter([i for b in self.batches() for i in b])


def prepare(targs) -> None:
    """Before the SFT trainer is built: TRL 1.16 refuses ``padding_free`` without packing when
    max_length is set (although it truncates rows to max_length then), so llmkit hides the key
    from TRL here and turns TRL's own padding-free collation on in ``install``."""
    name = type(targs).__name__
    if name in ("SFTConfig", "DPOConfig") and getattr(targs, "padding_free", False) and not getattr(targs, "packing", False):
        targs.padding_free = False  # DPO: TRL 1.16 would warn and fall back to padding; llmkit packs the forward instead
        targs.llmkit_padding_free = True


def install(trainer, targs, rows_before: int | None = None, stage: str = "", packed_attention: str = "auto") -> dict[str, Any]:
    """Put llmkit's batching into a built TRL trainer; returns what it measured (for the run's
    metrics) and prints one line about it.

    padding-free and packed batches: their attention (``packed_attention``, see
    resolve_packed_attention); with SDPA each sequence's attention runs on its own.
    group_by_length: the train sampler becomes LengthGroupedSampler over the tokenized rows;
    evaluation keeps sequential batches (held-out loss comparable with earlier runs).
    packing: the per-device batch shrinks by the packing ratio (rows after / ``rows_before``)."""
    from torch.utils.data import SequentialSampler

    info: dict[str, Any] = {}
    ds = trainer.train_dataset
    if ds is None or not hasattr(ds, "column_names"):
        return info
    batch = targs.per_device_train_batch_size
    if getattr(targs, "llmkit_padding_free", False) or getattr(targs, "packing", False):
        info.update(_packed_attention(trainer, packed_attention, stage))
    if getattr(targs, "llmkit_padding_free", False) and type(targs).__name__ == "DPOConfig":
        return {**info, **_padding_free_dpo(trainer, targs, ds, stage)}
    if getattr(targs, "llmkit_padding_free", False):
        collator = trainer.data_collator
        if not hasattr(collator, "padding_free"):
            raise ValueError("padding_free needs TRL's language-modeling collator; this trainer has "
                             f"{type(collator).__name__}")
        collator.padding_free = trainer.padding_free = targs.padding_free = True
        info["padding_random"] = _random_padding(*row_lengths(ds, getattr(targs, "max_length", None)), targs.seed, batch)
        _say(stage, f"padding-free batches: each batch of {batch} rows is one row of its sequences with their own "
                    f"position_ids (no padding; random batches would pad {100 * info['padding_random']:.0f} % of positions)")
        return info
    if getattr(targs, "packing", False) and rows_before:
        new = max(1, round(batch * len(ds) / rows_before))
        trainer._train_batch_size = new * max(1, getattr(targs, "n_gpu", 1) or 1)
        info.update(packed_rows=len(ds), rows_before_packing=rows_before, packed_batch=new)
        _say(stage, f"padding-free packing: {rows_before} rows in {len(ds)} packed rows; per-device batch {batch} -> {new} "
                    "packed rows (about the same examples per step)")
        return info
    if str(getattr(targs, "train_sampling_strategy", "random")) != GROUP:
        return info
    max_length = getattr(targs, "max_length", None)
    lengths, real = row_lengths(ds, max_length)
    # one group per global step: with several processes accelerate hands out consecutive per-device
    # batches of the sampler's order, so the group of a step must span all of them (the same rows
    # per step as one process with the same global batch)
    group = batch * max(1, getattr(targs, "world_size", 1) or 1)
    sampler = LengthGroupedSampler(lengths, group, targs.seed)
    info["padding_random"] = _random_padding(lengths, real, targs.seed, batch)
    info["padding_grouped"] = round(padding_fraction(lengths, list(iter(sampler)), batch, real), 4)  # per-device batches

    def train_sampler(dataset=None):
        if dataset is not None and dataset is not ds and len(dataset) != len(lengths):
            return LengthGroupedSampler(row_lengths(dataset, max_length)[0], group, targs.seed)
        return sampler

    def eval_sampler(dataset):
        return SequentialSampler(dataset) if trainer.args.world_size <= 1 else None

    trainer._get_train_sampler = train_sampler
    trainer._get_eval_sampler = eval_sampler
    if type(targs).__name__ == "SFTConfig":  # DPO's loss is a mean over pairs: no loss tokens to count (and no epoch to collate)
        info.update(token_weights(trainer))
    _say(stage, f"length-grouped batches: padding {100 * info['padding_random']:.0f} % of positions in random batches -> "
                f"{100 * info['padding_grouped']:.0f} % (epoch 1, from the rows' lengths); {batch} rows per step as before")
    return info


def _padding_free_dpo(trainer, targs, ds, stage: str) -> dict[str, Any]:
    """DPO's padded [chosen; rejected] batches through the policy and the reference as one row of
    sequences (llmkit/varlen.py: pack_fused_forward); the batches themselves are TRL's random ones."""
    from llmkit import varlen

    models = [trainer.model] + ([trainer.ref_model] if getattr(trainer, "ref_model", None) is not None else [])
    if not all(varlen.pack_fused_forward(m) for m in models):
        raise ValueError("padding_free DPO needs TRL's fused LM-head forward (trl 1.16's DPOTrainer); "
                         "set padding_free: false")
    targs.padding_free = True
    padding = _random_padding(*row_lengths(ds, getattr(targs, "max_length", None)), targs.seed,
                              targs.per_device_train_batch_size)
    _say(stage, f"padding-free batches: the {2 * targs.per_device_train_batch_size} sequences of each batch (chosen and "
                f"rejected) go through the policy and the reference as one row with their own position_ids (no padding; "
                f"padded, the batches would be {100 * padding:.0f} % padding)")
    return {"padding_random": padding}


def _packed_attention(trainer, choice: str, stage: str) -> dict[str, Any]:
    from llmkit import varlen

    how = resolve_packed_attention(choice, varlen.implementation(trainer.model))
    if how == "per_sequence" and varlen.use(trainer.model) is None:
        how = "mask"
    ref = getattr(trainer, "ref_model", None)
    if how == "per_sequence" and ref is not None:  # full DPO: the frozen reference copy runs the same forward
        varlen.use(ref)
    _say(stage, {"per_sequence": "attention of padding-free batches: SDPA on each sequence on its own (cost: the sum of "
                                 "length^2; packed_attention: mask for transformers' dense block-diagonal mask)",
                 "kernel_varlen": "attention of padding-free batches: FlashAttention's varlen kernel (sequence boundaries)",
                 "mask": "attention of padding-free batches: one dense block-diagonal causal mask over the batch's row"}[how])
    return {"packed_attention": how}


def token_weights(trainer) -> dict[str, Any]:
    """SFT with grouped batches: every loss token of an epoch weighs the same, as in random batches.

    TRL divides a step's summed token losses by the step's own loss tokens, so a step of short
    rows would give each of its tokens more weight than a step of long rows (in random batches
    every step holds about the mean). Here the divisor is the epoch's mean loss tokens per
    batch instead (counted once over the collated epoch), which restores per-token weighting.
    Evaluation keeps TRL's per-batch mean. Nothing changes for DPO (its loss is a mean over pairs)."""
    import torch

    loader = trainer.get_train_dataloader()
    counts = [int(b["labels"][..., 1:].ne(-100).sum()) for b in loader if "labels" in b]
    if not counts:
        return {}
    per_batch = sum(counts) / len(counts)
    original = trainer._get_num_items_in_batch

    def num_items(batch_samples, device):
        if not batch_samples or "labels" not in batch_samples[0] or not trainer.model.training:
            return original(batch_samples, device)
        n = per_batch * (len(batch_samples) if trainer.model_accepts_loss_kwargs else 1)
        if trainer.args.average_tokens_across_devices and trainer.args.world_size > 1:
            n *= trainer.args.world_size
        return torch.tensor(n, device=device)

    trainer._get_num_items_in_batch = num_items
    return {"loss_tokens_per_batch": round(per_batch, 1)}


def _say(stage: str, msg: str) -> None:
    from llmkit import runs

    if runs.is_main_process():
        print(f"llmkit {stage}: {msg}" if stage else f"llmkit: {msg}", flush=True)
