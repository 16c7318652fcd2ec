"""Attention over each sequence of a padding-free batch on its own, for SDPA (CPU or GPU).

A padding-free (or packed) SFT batch is one row holding several sequences, with per-sequence
position_ids and the boundaries TRL's collator adds (`cu_seq_lens_q`/`cu_seq_lens_k`).
FlashAttention's varlen kernel reads those boundaries. With SDPA, transformers 5.19 instead
builds one dense block-diagonal causal mask over the whole row, which is correct but makes the
attention cost (sum of lengths)^2 instead of the sum of length^2 — on a CPU the flattened
row then lost most of what dropping the padding saved (BENCHMARKS.md).

`ATTENTION` ("llmkit_sdpa_varlen") is an attention implementation registered with transformers'
AttentionInterface: when a forward carries `cu_seq_lens_q` (batch of one row, causal attention,
no sliding window shorter than a sequence, no attention sinks) it runs transformers' own SDPA
function on each sequence with `is_causal=True` and joins the outputs; every other forward
(padded batches, generation with a KV cache, evaluation without boundaries) goes to the SDPA
function unchanged, with the mask SDPA would get (`sdpa_mask` is registered under the same
name). Numerically each sequence's logits equal its unpacked logits (tests/test_packing.py).
The name lives only in the loaded model's config object: saved configs do not carry it.

Chosen by the SFT and DPO key `packed_attention` (llmkit/batching.py): `auto` = per sequence with
SDPA, the kernel's own varlen path with FlashAttention, `mask` = transformers' dense mask.

`pack_fused_forward` makes DPO padding-free: TRL 1.16's DPOTrainer pads its batches and has turned
its own padding_free off, so llmkit runs the padded batch through the forward TRL calls as one row
of sequences and gives TRL the per-token log-probabilities back in the padded shape.
"""

from __future__ import annotations

ATTENTION = "llmkit_sdpa_varlen"


def register() -> str:
    """Register the implementation (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention-function signature: query/key/value (batch, heads, length, dim),
    returns (batch, length, heads, dim) and no weights."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    packed = (cu is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2] and kwargs.get("s_aux") is None
              and getattr(module, "is_causal", True))
    bounds = cu.tolist() if packed else []
    window = getattr(module, "sliding_window", None)
    if not packed or bounds[-1] != query.shape[2] or (window and max(b - a for a, b in zip(bounds, bounds[1:])) > window):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                                                          "position_ids", "is_causal")}
    # split, not one slice per sequence: the backward of a slice writes its gradient into a zero
    # tensor of the whole row and autograd sums one such tensor per sequence; split's backward
    # joins the pieces once
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    pieces = zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))
    outs = [sdpa_attention_forward(module, q, k, v, None, dropout=dropout, scaling=scaling, is_causal=True, **rest)[0]
            for (q, k, v), n in zip(pieces, lengths) if n]
    return torch.cat(outs, dim=1), None


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def implementation(model) -> str | None:
    """The attention implementation of a loaded model (or of the model inside a PEFT model)."""
    return getattr(getattr(_base(model), "config", None), "_attn_implementation", None)


def use(model) -> str | None:
    """Switch a loaded model (or a PEFT model around one) from SDPA to per-sequence SDPA; returns
    the implementation it had, or None when it was not SDPA (FlashAttention keeps its own varlen
    path, eager and others are left as the user chose)."""
    before, base = implementation(model), _base(model)
    if before != "sdpa" or not hasattr(base, "set_attn_implementation"):
        return None
    base.set_attn_implementation(register())
    return before


# --------------------------------------------------------------------------- padding-free DPO

_PACKABLE = {"use_cache", "output_router_logits"}  # the other keyword arguments DPO's forward may carry


def pack_fused_forward(model) -> bool:
    """Run TRL's fused-LM-head forward (``model(..., labels=..., fused_lm_head=True)``, what TRL 1.16's
    DPOTrainer calls for the policy and the reference) padding-free: the padded batch's sequences go
    through the model as one row with their own position_ids and boundaries (``cu_seq_lens_q``/``_k``,
    read by this module's attention or FlashAttention's varlen kernel), and the per-token
    log-probabilities come back in the padded batch's shape, zeros at padding, as TRL computes them.
    Every other call (plain forwards, generation, inputs it does not know) is left as it was.
    Returns False when the model has no fused forward to wrap (TRL did not patch it)."""
    import functools

    import torch

    base = _base(model)
    fused = base.__dict__.get("forward")  # TRL's add_fused_lm_head sets it on the instance
    if fused is None or getattr(fused, "llmkit_packed", False):
        return fused is not None

    @functools.wraps(fused)
    def forward(*args, fused_lm_head=False, labels=None, input_ids=None, attention_mask=None, **kwargs):
        given = {k: v for k, v in kwargs.items() if v is not None}  # PEFT passes inputs_embeds=None, return_dict=None, ...
        if (not fused_lm_head or args or input_ids is None or attention_mask is None or labels is None
                or input_ids.dim() != 2 or set(given) - _PACKABLE):
            return fused(*args, fused_lm_head=fused_lm_head, labels=labels, input_ids=input_ids,
                         attention_mask=attention_mask, **kwargs)
        mask = attention_mask.bool()
        lengths = mask.sum(1)
        runs = mask[:, 0].long() + (~mask[:, :-1] & mask[:, 1:]).sum(1)  # stretches of real tokens per row
        if bool((runs > 1).any()):
            raise ValueError("padding-free DPO needs each sequence's tokens side by side (padding on one side only)")
        positions = (mask.cumsum(1) - 1)[mask][None]
        shifted = torch.full_like(labels, -100)
        shifted[:, :-1] = labels[:, 1:]  # the label each position predicts, -100 past a sequence's end
        bounds = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
        longest = int(lengths.max())
        out = fused(input_ids=input_ids[mask][None], position_ids=positions, shift_labels=shifted[mask][None],
                    fused_lm_head=True, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest,
                    max_length_k=longest, **given)
        for key in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"):
            flat = getattr(out, key, None)
            if flat is not None:
                padded = flat.new_zeros(mask.shape).masked_scatter(mask, flat[0])
                setattr(out, key, padded[:, :-1])  # TRL's shape: position t scores token t + 1
        if getattr(out, "label_mask", None) is not None:
            out.label_mask = (shifted != -100)[:, :-1]
        return out

    forward.llmkit_packed = True
    base.forward = forward
    return True
