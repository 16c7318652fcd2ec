"""bench/train.py's parent side on made-up runs: the lever rows, ratios against TRL and against
llmkit's default row, min/median/max over repeats, the held-out loss tolerance, the table and
the plot. (The measured runs themselves are the benchmark, not a test.)"""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO


def bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = mod
    spec.loader.exec_module(mod)
    return mod


def run(tok_s: float, pad: float, held: float | None = None, loss: float = 2.0) -> dict:
    return {"tokens_per_s": tok_s, "positions_per_s": tok_s / (1 - pad), "peak_train_mib": 800.0, "peak_process_mib": 900.0,
            "s_per_step": 1.0, "tokens_per_step": tok_s, "padding_fraction": pad, "total_s": 10.0, "outside_loop_s": 2.0,
            "loop_tail_s": 0.5, "eval_at_end_s": 0.2, "eval_in_loop_s": 0.0, "heldout_loss": held, "last_loss": loss,
            "tokens_per_cpu_s": tok_s}


def test_lever_rows_ratios_spread_and_tolerance(tmp_path):
    b = bench()
    runs = {"trl": [run(1000, 0.4), run(1200, 0.4), run(1100, 0.4)],
            "llmkit": [run(1800, 0.03, 1.50), run(1650, 0.03, 1.52), run(1700, 0.03, 1.51)],
            "llmkit group_by_length=off": [run(1050, 0.45, 1.60), run(1000, 0.45, 1.61), run(1100, 0.45, 1.59)]}
    c = b.compare("sft_lora", runs, band=0.05, loss_tolerance=0.03)
    assert c["sides"]["trl"]["tokens_per_s"] == 1100 and c["sides"]["llmkit"]["tokens_per_s_spread"] == [1650, 1700, 1800]
    main, off = c["rows"]
    assert main["side"] == "llmkit" and main["tokens_per_s_ratio"] == round(1700 / 1100, 3) and main["speed"] == "faster"
    assert off["vs_default"] == round(1050 / 1700, 3)
    # 1.60 against 1.51: 6 % apart, over a 3 % tolerance
    assert off["heldout_loss_rel_diff"] == round(0.09 / 1.51, 4) and off["heldout_loss_within_tolerance"] is False
    res = {"machine": {"cpu_count": 2, "platform": "Linux", "torch": "2", "torch_threads": 1, "load_average_at_start": [0.1, 0, 0],
                       "versions": {}},
           "steps": 10, "repeats": 3, "noise_band": 0.05, "loss_tolerance": 0.03, "model": {"parameters_m": 4.19}, "threads": 1,
           "load_average_at_end": [0.2, 0, 0], "tasks": [c]}
    md = b.markdown(res)
    assert "| sft_lora | llmkit group_by_length=off |" in md and "1,650–1,800" in md and "**over**" in md
    b.plot(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_variants_add_the_non_default_state_of_each_lever():
    b = bench()
    names = [n for n, _ in b.variants("dpo", ["group_by_length", "packing", "padding_free"])]
    assert names[0] == "llmkit" and len(names) == 3  # packing does not apply to DPO
    for name, lever in zip(names[1:], ("group_by_length", "padding_free")):
        assert name == f"llmkit {lever}={'off' if b.lever_default(lever, 'dpo') else 'on'}"
    assert b.lever_default("padding_free", "dpo") and not b.lever_default("group_by_length", "dpo")  # the DPO default
    assert [n for n, _ in b.variants("grpo", ["group_by_length"])] == ["llmkit"]


def test_llmkit_trains_on_the_whole_data_file_and_holds_out_another():
    """llmkit's held-out rows come from a file of their own (so both sides draw the same batches),
    and none of them is a training row."""
    import json

    b = bench()
    for task, (_, _, data, *_rest) in b.TASKS.items():
        argv = b.llmkit_argv(task, REPO / "model", REPO / "out", 3)
        held = argv[argv.index("--eval_datasets") + 1]
        assert argv[argv.index("--datasets") + 1] == str(REPO / data) and held != str(REPO / data)
        train_rows = {line.strip() for line in (REPO / data).read_text(encoding="utf-8").splitlines()}
        held_rows = [json.loads(line) for line in open(held, encoding="utf-8")]
        assert held_rows and not {json.dumps(r, ensure_ascii=False, sort_keys=True) for r in held_rows} & {
            json.dumps(json.loads(t), ensure_ascii=False, sort_keys=True) for t in train_rows if t}, task


def test_step_profile_attributes_matmul_attention_and_optimizer_and_the_ceiling():
    """A real torch.profiler run over three "steps" of known work: the matrix products, the
    attention kernel and the optimizer land in their own columns (self time, nothing counted
    twice: the columns add up to the total); and the ceiling is TRL's step with the operations
    scaled by the position share and the fixed part kept."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    b = bench()
    w = torch.nn.Parameter(torch.randn(256, 256))
    opt = torch.optim.AdamW([w])
    q = torch.randn(1, 4, 128, 64)
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=0, active=10**6))
    prof.start()
    for _ in range(4):  # the first is the warm-up, not recorded
        x = torch.randn(512, 256)
        loss = (x @ w).relu().sum() + torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        prof.step()
    prof.stop()
    p = b.step_profile(prof, 3)
    assert p["steps"] == 3 and all(p[k] > 0 for k in ("matmul", "attention", "optimizer", "other_ops", "outside_ops"))
    assert abs(sum(p[k] for k in ("matmul", "attention", "optimizer", "other_ops", "outside_ops")) - p["total"]) < 0.05
    assert not any("mm" in k or "scaled_dot" in k for k in p["top_other_ops"])  # attributed, not left in "other"
    trl = {"total": 100.0, "optimizer": 5.0, "outside_ops": 15.0, "positions_per_step": 1000}
    assert b.profile_ceiling(trl, {"positions_per_step": 500}) == round(100 / (20 + 80 * 0.5), 3)
    assert b.profile_ceiling(trl, {"positions_per_step": 1000}) == 1.0
