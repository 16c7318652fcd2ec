"""Attention of a padding-free row: per sequence (llmkit/varlen.py) vs one dense block-diagonal mask.

    OMP_NUM_THREADS=1 python bench/packed_attention.py [--batches 40] [--sequences 8] [--seed 1]

One process, the bench model of bench/train.py (its build_model(): built once, cached in
.cache/bench/train/), two copies
of the same weights: one with transformers' SDPA (the row's sequences kept apart by the dense mask
transformers builds from the position_ids, `packed_attention: mask`), one with llmkit's
per-sequence SDPA (`packed_attention: auto`). Each batch is one row of --sequences random lengths
(20-110 tokens, SFT-like); every batch runs a forward and a backward through both copies, in
rotating order, so both see the same machine. Prints the summed time of each and their ratio, and
checks that both give the same logits (exit 1 when they differ by 1e-4 or more).
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    sys.path[:0] = [str(REPO / "bench"), str(REPO)]
    import torch
    from train import build_model
    from transformers import AutoModelForCausalLM

    from llmkit import varlen

    model_dir = build_model()

    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    per = copy.deepcopy(dense)
    varlen.use(per)
    models = {"mask": dense, "per_sequence": per}

    def batch():
        lengths = [rng.randint(20, 110) for _ in range(a.sequences)]
        bounds = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
        return {"input_ids": torch.randint(0, dense.config.vocab_size, (1, sum(lengths))),
                "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
                "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": max(lengths), "max_length_k": max(lengths),
                "use_cache": False}  # with a cache transformers skips the packed-sequence mask (DEVELOPERS.md)

    def step(name, b):
        t = time.perf_counter()
        out = models[name](**b)
        out.logits.logsumexp(-1).mean().backward()
        models[name].zero_grad(set_to_none=True)
        return time.perf_counter() - t, out.logits.detach()

    b = batch()
    (_, x), (_, y) = step("mask", b), step("per_sequence", b)  # warm-up, and the same logits
    diff = float((x - y).abs().max())
    names = list(models)
    total = dict.fromkeys(names, 0.0)
    for i in range(a.batches):
        b = batch()
        for name in names[i % 2:] + names[:i % 2]:
            total[name] += step(name, b)[0]
    print(f"{a.batches} batches of one row of {a.sequences} sequences, torch threads {torch.get_num_threads()}")
    for name in names:
        print(f"  {name:13s} {total[name]:7.3f} s")
    print(f"mask / per_sequence: {total['mask'] / total['per_sequence']:.3f}x   (largest logit difference {diff:.1e})")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
