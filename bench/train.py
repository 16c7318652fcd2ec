"""Training throughput and memory: llmkit's stages against plain TRL scripts, same run, same machine.

    python bench/train.py [--only pretrain,sft_full,sft_lora,dpo,grpo] [--steps N] [--repeats R]
                          [--threads T] [--levers group_by_length,packing] [--out bench/results]

For each task, two sides train the same model on the same data with the same budget:

  llmkit  the real stage, `llmkit.cli.main(["<stage>", "--key", "value", ...])`, with llmkit's
          defaults (its held-out split, before/after evaluation, metrics callback, ...);
  trl     bench/trl_baselines/<task>.py: the few lines a TRL user writes with TRL's defaults
          (transformers.Trainer + DataCollatorForLanguageModeling for pretraining).

Both sides get the same model directory, training rows (llmkit's held-out rows come from HELDOUT's
files, so it trains on the whole data file, in its order, as the script does), max_length (pretrain:
block_size = max_length), per-device batch, number of optimizer steps, learning rate and LoRA
r/alpha/dropout/targets; everything else is each side's default (bench/README.md lists where the
defaults differ).

  pretrain  full, data/corpus_train.jsonl        sft_full  full, data/sft_train.jsonl
  sft_lora  LoRA, data/sft_train.jsonl            dpo       LoRA, data/preferences_train.jsonl
  grpo      LoRA, data/math_easy_train.jsonl (2 prompts x 8 completions of <= 64 tokens per step)

The model (built once, cached in .cache/bench/train/): a byte-level BPE tokenizer trained by
`llmkit tokenizer` on data/corpus_train.jsonl (vocab 2000) and a random Llama with hidden 256,
intermediate 688, 4 layers, 4 heads (4 KV heads), untied embeddings: 4.19M parameters, big enough
that the step dominates Python overhead on a CPU, small enough for 2 cores.

Every side runs in its own subprocess (`python bench/train.py --child SPEC`), which wraps
transformers.Trainer before the stage or the script builds its trainer, so that both sides are
measured by the same code:

  tokens     non-padding tokens of every training forward, counted in compute_loss:
             attention_mask.sum() (SFT; DPO: chosen + rejected; pretraining with padding),
             prompt_mask.sum() + completion_mask.sum() (GRPO: prompt and sampled completion up to
             its EOS), every position of llmkit's packed pretraining blocks (they hold no padding),
             positions before the padding tail for padding-free batches. "Positions" counts
             padding too (the work the model actually does).
  time       wall time from the end of optimizer step 1 to the end of the last step (step 1, with
             its lazy initialisation, is the warm-up). It includes everything the loop does between
             steps: collation, GRPO generation and rewards, logging, callbacks, and any evaluation
             or checkpoint the side's defaults schedule there. Outside it, reported apart: model
             loading, data preparation, llmkit's before/after evaluation and samples, and what
             trainer.train() does after the last step (the end-of-training evaluation that a
             step-based eval strategy adds, the final checkpoint).
  tokens/s   tokens of steps 2..N / that time.
  peak MiB   peak resident memory (VmHWM) during trainer.train(): the high-water mark is reset
             (/proc/self/clear_refs) when training begins, so it is the memory held at the start
             of training plus what the loop adds. The whole process's peak (ru_maxrss, loading and
             llmkit's evaluation included) is reported too.
  loss       the last training step's loss (GRPO: also the mean reward of the last step), and
             llmkit's held-out loss after the last step (its own held-out split, the same rows in
             every llmkit row of a task).
  CPU-s      tokens per second of the process's CPU time over the same steps: with one torch
             thread this is the work itself, which a busy machine distorts far less than wall time.

Levers (--levers): besides llmkit's defaults, each lever that applies to a task adds an llmkit
row with that lever in the state llmkit does not choose on this machine (padding_free: each
batch flattened into one row with per-sequence position_ids, `padding_free`; packed_attention:
that row's attention per sequence or under one dense block-diagonal mask, `packed_attention`; group_by_length:
length-grouped batches, `train_sampling_strategy`; packing: bfd packing, `packing`/
`packing_strategy`; torch_compile). Each row shows its ratio to TRL, its tokens/s over
llmkit's default row, its padding, and its held-out loss against the default row's (relative
difference, within --loss-tolerance, default 3 %, counts as the same training).

Each side runs --repeats times (default 2), rotating which side goes first; medians are
reported, with min/median/max of tokens/s. Ratios are llmkit / TRL: tokens/s above 1 means llmkit is faster, peak memory below 1
means it uses less. On a shared machine use --threads 1: with several torch threads, a CPU that
another process keeps busy can make a step many times slower (measured: 30x) and the ratios
meaningless. --llmkit-extra adds llmkit overrides for diagnosis (recorded in the results).
Results: <out>/train-cpu.json, train-cpu.md and train-cpu.png (ratios as bars with the min–max
of the runs, per-CPU-second ratios as diamonds, and the padding of both sides). CPU only
(both sides train in float32 on the CPU). bench/README.md explains how to read them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINES = REPO / "bench" / "trl_baselines"
WORK = REPO / ".cache" / "bench" / "train"

MODEL_SHAPE = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 4, "max_position_embeddings": 1024, "tie_word_embeddings": False}
VOCAB = 2000
MAX_LENGTH = 256
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target_modules": "all-linear"}

# task -> (llmkit stage, baseline script, data file, per-device batch, learning rate, LoRA?)
TASKS = {
    "pretrain": ("pretrain", "pretrain.py", "data/corpus_train.jsonl", 8, 3e-4, False),
    "sft_full": ("sft", "sft.py", "data/sft_train.jsonl", 8, 1e-4, False),
    "sft_lora": ("sft", "sft.py", "data/sft_train.jsonl", 8, 2e-4, True),
    "dpo": ("dpo", "dpo.py", "data/preferences_train.jsonl", 8, 5e-5, True),
    "grpo": ("grpo", "grpo.py", "data/math_easy_train.jsonl", 16, 1e-5, True),
}
GRPO = {"num_generations": 8, "max_completion_length": 64}
# llmkit's held-out rows come from these files, so that its training rows are the whole data file
# in the file's order, as the TRL script's are: with the same seed both sides then draw the same
# batches (without it llmkit holds out a split of the file and trains on other batches, whose cost
# per position differed by up to 12 % from the script's at equal padding)
HELDOUT = {"pretrain": "data/corpus_heldout.jsonl", "sft_full": "data/sft_heldout.jsonl",
           "sft_lora": "data/sft_heldout.jsonl", "dpo": "data/preferences_heldout.jsonl",
           "grpo": "data/math_easy_test.jsonl"}


# --------------------------------------------------------------------------- the shared model

def build_model() -> Path:
    """Tokenizer (llmkit tokenizer stage) and a random Llama of MODEL_SHAPE, saved once."""
    name = "model-h{hidden_size}-l{num_hidden_layers}".format(**MODEL_SHAPE)
    model_dir, tok_dir = WORK / name, WORK / "tokenizer"
    if (model_dir / "config.json").is_file():
        return model_dir
    WORK.mkdir(parents=True, exist_ok=True)
    if not (tok_dir / "tokenizer.json").is_file():
        shutil.rmtree(tok_dir, ignore_errors=True)
        shutil.rmtree(f"{tok_dir}.partial", ignore_errors=True)
        code = "import sys; from llmkit.cli import main; sys.exit(main(sys.argv[1:]))"
        subprocess.run([sys.executable, "-c", code, "tokenizer", "--output_dir", str(tok_dir),
                        "--datasets", str(REPO / "data/corpus_train.jsonl"), "--vocab_size", str(VOCAB)],
                       check=True, cwd=REPO)
    code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
tok = AutoTokenizer.from_pretrained({str(tok_dir)!r})
cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, **{MODEL_SHAPE!r})
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
print(f"bench model: {{sum(p.numel() for p in model.parameters()) / 1e6:.2f}}M parameters")
model.save_pretrained({str(model_dir)!r})
tok.save_pretrained({str(model_dir)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return model_dir


# --------------------------------------------------------------------------- the two command lines

def llmkit_argv(task: str, model: Path, out: Path, steps: int) -> list[str]:
    stage, _, data, batch, lr, lora = TASKS[task]
    argv = [stage, "--model_name_or_path", str(model), "--datasets", str(REPO / data), "--output_dir", str(out),
            "--max_steps", str(steps), "--per_device_train_batch_size", str(batch), "--learning_rate", str(lr),
            "--eval_datasets", str(REPO / HELDOUT[task])]
    argv += ["--block_size", str(MAX_LENGTH)] if stage == "pretrain" else []
    argv += ["--max_length", str(MAX_LENGTH)] if stage in ("sft", "dpo") else []
    if stage == "grpo":
        argv += [x for k, v in GRPO.items() for x in (f"--{k}", str(v))]
    if lora:
        argv += ["--use_peft", "true"] + [x for k, v in LORA.items() for x in (f"--{k}", str(v))]
    return argv


def trl_argv(task: str, model: Path, out: Path, steps: int) -> list[str]:
    _, _, data, batch, lr, lora = TASKS[task]
    argv = ["--model", str(model), "--data", str(REPO / data), "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", str(batch), "--learning_rate", str(lr), "--max_length", str(MAX_LENGTH)]
    if task == "grpo":
        argv += [x for k, v in GRPO.items() for x in (f"--{k}", str(v))]
    if lora:
        argv += [x for k, v in LORA.items() for x in (f"--{k}", str(v))]
    return argv


# --------------------------------------------------------------------------- child: one measured run

def _proc_status(key: str) -> int | None:
    """VmRSS / VmHWM of this process in bytes (Linux), or None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _count_tokens(inputs) -> tuple[int, int]:
    """(non-padding tokens, tokens including padding) of one training batch; see the module doc."""
    if not hasattr(inputs, "keys"):
        return 0, 0
    if "prompt_mask" in inputs and "completion_mask" in inputs:  # GRPO
        pm, cm = inputs["prompt_mask"], inputs["completion_mask"]
        return int(pm.sum()) + int(cm.sum()), pm.numel() + cm.numel()
    if "attention_mask" in inputs:
        am = inputs["attention_mask"]
        return int(am.sum()), am.numel()
    if "position_ids" in inputs and "input_ids" in inputs:  # padding-free: pads are a tail of position 0
        pos = inputs["position_ids"].reshape(-1).tolist()
        tail = 0
        while tail < len(pos) and pos[len(pos) - 1 - tail] == 0:
            tail += 1
        return len(pos) - tail, len(pos)
    if "input_ids" in inputs:  # packed blocks without any padding
        n = inputs["input_ids"].numel()
        return n, n
    return 0, 0


def install_probes(rec: dict) -> None:
    """Wrap transformers.Trainer so that every trainer built after this (llmkit's or the script's)
    reports step times, tokens, losses and memory into ``rec``."""
    import torch
    import transformers
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            try:  # reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0)
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
                rec["hwm_reset"] = True
            except OSError:
                rec["hwm_reset"] = False
            rec["rss_train_start"] = _proc_status("VmRSS")
            rec["rss_max_sampled"] = rec["rss_train_start"] or 0
            rec["t_train_begin"] = time.perf_counter()
            rec["in_train"] = True
            if rec["profiling"]:  # steps 2..N (step 1 is the warm-up), as the measured time
                from torch.profiler import ProfilerActivity, profile, schedule

                rec["_profiler"] = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=0, active=10**6))
                rec["_profiler"].start()

        def on_step_end(self, args, state, control, **kw):
            metrics = getattr(rec.get("_trainer"), "_metrics", None)
            if isinstance(metrics, dict) and metrics.get("train", {}).get("reward"):
                rec["last_reward"] = float(metrics["train"]["reward"][-1])
            rec["steps"].append((time.perf_counter(), rec["tokens"], rec["padded_tokens"], rec["eval_s"], time.process_time()))
            rec["rss_max_sampled"] = max(rec["rss_max_sampled"], _proc_status("VmRSS") or 0)
            if rec.get("_profiler") is not None:
                rec["_profiler"].step()
                if state.global_step >= (state.max_steps or 0) > 0:  # the measured steps only, not the evaluation after them
                    self._stop_profiler()

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            if metrics and "eval_loss" in metrics and state.global_step >= (state.max_steps or 0) > 0:
                rec["heldout_loss"] = float(metrics["eval_loss"])  # the evaluation after the last step

        def on_train_end(self, args, state, control, **kw):
            rec["t_train_end"] = time.perf_counter()
            rec["eval_s_at_train_end"] = rec["eval_s"]
            rec["in_train"] = False
            rec["rss_train_peak"] = _proc_status("VmHWM") if rec.get("hwm_reset") else rec["rss_max_sampled"]
            rec["global_step"] = state.global_step
            self._stop_profiler()

        @staticmethod
        def _stop_profiler():
            if rec.get("_profiler") is not None:
                rec["_profiler"].stop()
                rec["profile"] = step_profile(rec.pop("_profiler"), len(rec["steps"]) - 1)

    init = transformers.Trainer.__init__
    evaluate = transformers.Trainer.evaluate

    def patched_init(self, *a, **k):
        init(self, *a, **k)
        rec["trainer"] = type(self).__name__
        rec["_trainer"] = self
        rec["args"] = {k: str(getattr(self.args, k, None)) for k in (
            "per_device_train_batch_size", "learning_rate", "max_steps", "logging_steps", "eval_strategy", "eval_steps",
            "save_steps", "include_num_input_tokens_seen", "gradient_checkpointing", "bf16", "use_cpu", "packing",
            "padding_free", "packing_strategy", "train_sampling_strategy", "torch_compile", "max_length", "warmup_steps",
            "lr_scheduler_type", "weight_decay", "optim", "report_to",
            "num_generations", "max_completion_length", "beta", "loss_type", "assistant_only_loss", "completion_only_loss")}
        rec["trainable_parameters"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        rec["callbacks"] = [type(c).__name__ for c in self.callback_handler.callbacks]
        self.add_callback(Probe())
        compute_loss = self.compute_loss

        def counted(model, inputs, *a, **k):
            out = compute_loss(model, inputs, *a, **k)
            if rec["in_train"] and torch.is_grad_enabled():
                n, padded = _count_tokens(inputs)
                if type(self.args).__name__ == "DPOConfig" and getattr(self.args, "llmkit_padding_free", False):
                    padded = n  # llmkit's padding-free DPO: the padded batch goes through the model as one row of its tokens
                rec["tokens"] += n
                rec["padded_tokens"] += padded
                loss = out[0] if isinstance(out, tuple) else out
                rec["last_loss"] = float(loss.detach().float().mean())
            return out

        self.compute_loss = counted

    def timed_evaluate(self, *a, **k):
        t = time.perf_counter()
        try:
            return evaluate(self, *a, **k)
        finally:
            if rec["in_train"]:  # Trainer.train() calls evaluate() itself: periodic and end-of-training evaluation
                rec["eval_s"] += time.perf_counter() - t
                rec["evals_in_loop"] += 1

    transformers.Trainer.__init__ = patched_init
    transformers.Trainer.evaluate = timed_evaluate


MATMUL = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"}


def step_profile(prof, steps: int) -> dict:
    """Milliseconds per measured step by kind of work, from torch.profiler's CPU events (self time,
    so nothing is counted twice): matrix products, attention kernels (forward and backward), the
    optimizer (its record_function scope, children included), the other tensor operations, and the
    time inside a step spent outside any operation (Python: modules, hooks, collation, the trainer)."""
    kinds = dict.fromkeys(("matmul", "attention", "optimizer", "other_ops", "outside_ops"), 0.0)
    others = {}
    for e in prof.key_averages():
        us = e.self_cpu_time_total
        if e.key.startswith("ProfilerStep"):
            kinds["outside_ops"] += us
        elif e.key in MATMUL:
            kinds["matmul"] += us
        elif "scaled_dot_product" in e.key or "flash_attention" in e.key:
            kinds["attention"] += us
        elif e.key.startswith("Optimizer."):
            kinds["optimizer"] += e.cpu_time_total
            kinds["other_ops"] += us - e.cpu_time_total  # its children's self time is in other_ops: move it over
        else:
            kinds["other_ops"] += us
            others[e.key] = us
    out = {k: round(v / 1000 / max(steps, 1), 2) for k, v in kinds.items()}
    out["steps"] = steps
    out["top_other_ops"] = {k: round(v / 1000 / max(steps, 1), 2) for k, v in sorted(others.items(), key=lambda kv: -kv[1])[:12]}
    out["total"] = round(sum(out[k] for k in kinds), 2)
    return out


FIXED = ("optimizer", "outside_ops")  # per step, whatever the batch's positions


def profile_ceiling(trl: dict, lk: dict) -> float | None:
    """The speed-up over TRL if llmkit's step cost TRL's step with every operation's time scaled by
    llmkit's share of TRL's positions and the optimizer and the time outside operations unchanged:
    what removing the padding can give at TRL's cost per position and per step."""
    if not trl.get("total") or not trl.get("positions_per_step"):
        return None
    share = lk["positions_per_step"] / trl["positions_per_step"]
    fixed = sum(trl[k] for k in FIXED)
    return round(trl["total"] / (fixed + (trl["total"] - fixed) * share), 3)


def summarize(rec: dict) -> dict:
    steps = rec["steps"]
    out = {k: rec.get(k) for k in ("side", "task", "trainer", "args", "callbacks", "trainable_parameters", "global_step",
                                    "last_loss", "last_reward", "evals_in_loop", "hwm_reset", "exit", "torch_threads",
                                    "heldout_loss", "variant", "batching", "profile")}
    mib = 1024 * 1024
    out["peak_train_mib"] = round(rec["rss_train_peak"] / mib, 1) if rec.get("rss_train_peak") else None
    out["rss_train_start_mib"] = round(rec["rss_train_start"] / mib, 1) if rec.get("rss_train_start") else None
    out["peak_process_mib"] = round(rec["ru_maxrss_kib"] / 1024, 1)
    out["total_s"] = round(rec["total_s"], 2)
    if len(steps) >= 2:
        (t1, n1, p1, e1, c1), (tn, nn, pn, en, cn) = steps[0], steps[-1]
        dt = tn - t1
        out["measured_steps"] = len(steps) - 1
        out["measured_s"] = round(dt, 3)
        out["s_per_step"] = round(dt / (len(steps) - 1), 4)
        out["warmup_step_s"] = round(t1 - rec["t_train_begin"], 3)
        out["tokens"] = nn - n1
        out["padded_tokens"] = pn - p1
        out["padding_fraction"] = round(1 - (nn - n1) / (pn - p1), 4) if pn > p1 else None
        out["tokens_per_step"] = round((nn - n1) / (len(steps) - 1), 1)
        out["tokens_per_s"] = round((nn - n1) / dt, 1) if dt > 0 else None
        out["positions_per_s"] = round((pn - p1) / dt, 1) if dt > 0 else None
        out["cpu_s"] = round(cn - c1, 3)  # CPU time of the process over the same steps: what a busy machine distorts least
        out["tokens_per_cpu_s"] = round((nn - n1) / (cn - c1), 1) if cn > c1 else None
        out["eval_in_loop_s"] = round(en - e1, 3)
        out["step_s"] = [round(b[0] - a[0], 3) for a, b in zip([(rec["t_train_begin"],)] + steps[:-1], steps)]
    if rec.get("t_train_end") and rec.get("t_train_begin"):
        if steps:  # after the last step: end-of-training evaluation (step-based eval strategies) and checkpoint
            out["loop_tail_s"] = round(rec["t_train_end"] - steps[-1][0], 2)
            out["eval_at_end_s"] = round(rec["eval_s_at_train_end"] - steps[-1][3], 2)
        out["train_loop_s"] = round(rec["t_train_end"] - rec["t_train_begin"], 2)
        out["outside_loop_s"] = round(rec["total_s"] - out["train_loop_s"], 2)
    return out


def child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rec = {"side": spec["side"], "task": spec["task"], "variant": spec.get("variant"), "steps": [], "tokens": 0,
           "padded_tokens": 0, "eval_s": 0.0, "evals_in_loop": 0, "in_train": False, "profiling": bool(spec.get("profile"))}
    t0 = time.perf_counter()
    install_probes(rec)
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    rec["torch_threads"] = torch.get_num_threads()
    if spec["side"] == "llmkit":
        from llmkit.cli import main

        rec["exit"] = main(spec["argv"])
        manifest = Path(spec["out"]) / "manifest.json" if spec.get("out") else None  # bench/gpu_check.py gives no out
        if manifest is not None and manifest.is_file():  # what the stage chose and measured about its batches
            m = json.loads(manifest.read_text())
            metrics, layout = m.get("metrics", {}), m.get("layout", {})
            rec["batching"] = {**{k: layout[k] for k in ("batches", "train_sampling_strategy", "packing", "torch_compile")
                                  if k in layout},
                               **{k: metrics[k] for k in ("padding_random", "padding_grouped", "packed_batch") if k in metrics}}
            if rec.get("heldout_loss") is None and metrics.get("eval_loss") is not None:
                rec["heldout_loss"] = float(metrics["eval_loss"])
    else:
        import runpy

        sys.path.insert(0, str(BASELINES))
        sys.argv = [spec["script"], *spec["argv"]]
        runpy.run_path(spec["script"], run_name="__main__")
        rec["exit"] = 0
    rec["total_s"] = time.perf_counter() - t0
    rec["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(spec["result"]).write_text(json.dumps(summarize(rec), indent=2))
    return 0 if rec["exit"] == 0 else 1


# --------------------------------------------------------------------------- levers

# lever -> (tasks it applies to, llmkit overrides that turn it on, overrides that turn it off). The
# llmkit row of a task runs llmkit's defaults; each lever adds the row with it in the other state.
LEVERS = {
    "padding_free": (("sft_full", "sft_lora", "dpo"), ["--padding_free", "true", "--train_sampling_strategy", "random"],
                     ["--padding_free", "false"]),
    "group_by_length": (("sft_full", "sft_lora", "dpo"), ["--train_sampling_strategy", "group_by_length"],
                        ["--train_sampling_strategy", "random"]),
    "packing": (("sft_full", "sft_lora"), ["--packing", "true", "--packing_strategy", "bfd", "--eval_packing", "false",
                                           "--train_sampling_strategy", "random"], ["--packing", "false"]),
    "torch_compile": (("sft_full", "sft_lora", "dpo"), ["--torch_compile", "true"], ["--torch_compile", "false"]),
    "packed_attention": (("sft_full", "sft_lora", "dpo"), ["--packed_attention", "per_sequence"], ["--packed_attention", "mask"]),
}
DEFAULT_LEVERS = "padding_free,packed_attention,group_by_length,packing"


def lever_default(lever: str, task: str) -> bool:
    """Whether llmkit turns ``lever`` on by default for ``task`` on this machine."""
    from llmkit import batching

    d = batching.defaults(TASKS[task][0], {})
    if lever == "group_by_length":
        return d.get("train_sampling_strategy") == batching.GROUP
    if lever in ("packing", "padding_free"):
        return bool(d.get(lever))
    if lever == "packed_attention":  # on: each sequence's attention on its own (llmkit/varlen.py), the default with SDPA
        return bool(d.get("padding_free")) and batching.resolve_packed_attention("auto", "sdpa") == "per_sequence"
    return bool(d.get(lever))


def variants(task: str, levers: list[str]) -> list[tuple[str, list[str]]]:
    """(side name, extra llmkit overrides): llmkit's defaults first, then one row per lever in
    the state llmkit does not choose by default."""
    out = [("llmkit", [])]
    for lever in levers:
        tasks, on, off = LEVERS[lever]
        if task in tasks:
            state = not lever_default(lever, task)
            out.append((f"llmkit {lever}={'on' if state else 'off'}", on if state else off))
    return out


# --------------------------------------------------------------------------- parent

def run_side(side: str, task: str, model: Path, steps: int, log_dir: Path, threads: int | None = None,
             llmkit_extra: list[str] | None = None, profile: bool = False) -> dict:
    slug = side.replace(" ", "-").replace("=", "-") + ("-profiled" if profile else "")
    out = WORK / "runs" / f"{task}-{slug}"
    for p in (out, Path(f"{out}.partial")):  # never resume an earlier run's checkpoint
        shutil.rmtree(p, ignore_errors=True)
    result = log_dir / f"{task}-{slug}.json"
    result.unlink(missing_ok=True)
    if side.startswith("llmkit"):
        spec = {"side": "llmkit", "variant": side, "task": task, "out": str(out),
                "argv": llmkit_argv(task, model, out, steps) + list(llmkit_extra or [])}
    else:
        script = BASELINES / TASKS[task][1]
        spec = {"side": side, "variant": side, "task": task, "script": str(script), "argv": trl_argv(task, model, out, steps)}
    spec["result"] = str(result)
    spec["threads"] = threads
    spec["profile"] = profile
    threads_env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), **threads_env}
    log = log_dir / f"{task}-{slug}.log"
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=REPO, env=env,
                              stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"bench/train.py: {task} ({side}) failed with status {proc.returncode}; log {log}:\n" + "\n".join(tail))
    res = json.loads(result.read_text())
    res["subprocess_s"] = round(wall, 2)
    shutil.rmtree(out, ignore_errors=True)
    return res


def _median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _spread(rows: list[dict], key: str) -> list | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return [min(vals), statistics.median(vals), max(vals)] if vals else None


def verdict(ratio: float | None, band: float) -> str:
    if ratio is None:
        return "?"
    return "faster" if ratio > 1 + band else ("slower" if ratio < 1 - band else "same")


MEDIANS = ("tokens_per_s", "tokens_per_cpu_s", "positions_per_s", "peak_train_mib", "peak_process_mib", "s_per_step", "tokens_per_step",
           "padding_fraction", "total_s", "outside_loop_s", "loop_tail_s", "eval_at_end_s", "eval_in_loop_s", "heldout_loss")


def side_summary(rows: list[dict]) -> dict:
    out = {k: _median(rows, k) for k in MEDIANS}
    out.update(tokens_per_s_spread=_spread(rows, "tokens_per_s"), heldout_loss_spread=_spread(rows, "heldout_loss"),
               last_loss=rows[-1].get("last_loss"), last_reward=rows[-1].get("last_reward"),
               batching=rows[-1].get("batching"), runs=rows)
    return out


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def compare(task: str, runs: dict[str, list[dict]], band: float, loss_tolerance: float = 0.03) -> dict:
    """One task: every side's medians (min/median/max of tokens/s), llmkit's rows against TRL, and
    each lever row's held-out loss against llmkit's default row (within ``loss_tolerance``, relative)."""
    sides = {name: side_summary(rows) for name, rows in runs.items()}
    tr, lk = sides["trl"], sides["llmkit"]
    rows = []
    for name, x in sides.items():
        if name == "trl":
            continue
        ratio = _ratio(x["tokens_per_s"], tr["tokens_per_s"])
        row = {"side": name, "tokens_per_s_ratio": ratio, "positions_per_s_ratio": _ratio(x["positions_per_s"], tr["positions_per_s"]),
               "tokens_per_cpu_s_ratio": _ratio(x["tokens_per_cpu_s"], tr["tokens_per_cpu_s"]),
               "cpu_vs_default": _ratio(x["tokens_per_cpu_s"], lk["tokens_per_cpu_s"]) if name != "llmkit" else None,
               "peak_train_mib_ratio": _ratio(x["peak_train_mib"], tr["peak_train_mib"]), "speed": verdict(ratio, band),
               "vs_default": _ratio(x["tokens_per_s"], lk["tokens_per_s"]) if name != "llmkit" else None}
        if name != "llmkit" and x["heldout_loss"] is not None and lk["heldout_loss"] is not None:
            rel = abs(x["heldout_loss"] - lk["heldout_loss"]) / lk["heldout_loss"]
            row.update(heldout_loss_rel_diff=round(rel, 4), heldout_loss_within_tolerance=rel <= loss_tolerance)
        rows.append(row)
    main_row = rows[0]
    return {"task": task, "sides": sides, "rows": rows, "llmkit": lk, "trl": tr,
            "tokens_per_s_ratio": main_row["tokens_per_s_ratio"], "positions_per_s_ratio": main_row["positions_per_s_ratio"],
            "peak_train_mib_ratio": main_row["peak_train_mib_ratio"],
            "peak_process_mib_ratio": _ratio(lk["peak_process_mib"], tr["peak_process_mib"]), "speed": main_row["speed"]}


def machine() -> dict:
    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "load_average_at_start": load,
            "versions": _versions()}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("transformers", "trl", "peft", "accelerate", "datasets", "llmkit"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _f(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"


def _pad(s):
    pf = s.get("padding_fraction")
    return f"{_f(s['tokens_per_step'], 0)} ({_f(100 * pf, 0) if pf is not None else '–'} %)"


def _spread_text(sp):
    return "–" if not sp else f"{sp[0]:,.0f}–{sp[2]:,.0f}"


def _batches(s):
    b = s.get("batching") or {}
    return b.get("batches", "–")


def markdown(res: dict) -> str:
    m = res["machine"]
    v = m.get("versions", {})
    lines = [f"Training throughput and peak memory, llmkit / plain TRL ({res['steps']} optimizer steps per run, step 1 "
             f"excluded as warm-up; median of {res['repeats']} run(s) per side, alternating order; min–max of tokens/s "
             "over the runs in brackets).",
             f"Machine: {m['cpu_count']} CPU cores ({res.get('threads') or m['torch_threads']} torch threads), {m['platform']}, "
             f"torch {m['torch']}, transformers {v.get('transformers')}, TRL {v.get('trl')}, PEFT {v.get('peft')}, "
             f"load average at start {m['load_average_at_start']}, at end {res.get('load_average_at_end')}. "
             f"Model: {res['model']['parameters_m']}M-parameter Llama "
             f"(hidden {MODEL_SHAPE['hidden_size']}, {MODEL_SHAPE['num_hidden_layers']} layers), max_length {MAX_LENGTH}.",
             *([f"llmkit ran with extra overrides: `{res['llmkit_extra']}` (not its defaults)."] if res.get("llmkit_extra") else []),
             "",
             "| task | llmkit side | batches | llmkit tok/s [min–max] | TRL tok/s [min–max] | ratio | vs llmkit default "
             "| ratio per CPU-second (vs default) "
             "| llmkit tok/step (pad %) | TRL tok/step (pad %) | ratio incl. padding | peak MiB llmkit / TRL "
             "| held-out loss (Δ vs default) | final train loss llmkit / TRL |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for c in res["tasks"]:
        tr = c["sides"]["trl"]
        for row in c["rows"]:
            x = c["sides"][row["side"]]
            loss = f"{_f(x['last_loss'], 3)} / {_f(tr['last_loss'], 3)}"
            if x.get("last_reward") is not None or tr.get("last_reward") is not None:
                loss += f" (reward {_f(x.get('last_reward'), 2)} / {_f(tr.get('last_reward'), 2)})"
            held = _f(x.get("heldout_loss"), 4)
            if row.get("heldout_loss_rel_diff") is not None:
                held += f" ({100 * row['heldout_loss_rel_diff']:.1f} %{'' if row['heldout_loss_within_tolerance'] else ' **over**'})"
            lines.append(
                f"| {c['task']} | {row['side']} | {_batches(x)} | {_f(x['tokens_per_s'], 0)} [{_spread_text(x['tokens_per_s_spread'])}] "
                f"| {_f(tr['tokens_per_s'], 0)} [{_spread_text(tr['tokens_per_s_spread'])}] | **{_f(row['tokens_per_s_ratio'], 2)}** "
                f"| {_f(row['vs_default'], 2)} | {_f(row.get('tokens_per_cpu_s_ratio'), 2)} ({_f(row.get('cpu_vs_default'), 2)}) "
                f"| {_pad(x)} | {_pad(tr)} | {_f(row['positions_per_s_ratio'], 2)} "
                f"| {_f(x['peak_train_mib'], 0)} / {_f(tr['peak_train_mib'], 0)} | {held} | {loss} |")
    lines += ["", "Whole process: total wall time; of it, outside trainer.train() (loading, data preparation, llmkit's "
              "before/after evaluation and samples, saving); after the last step inside trainer.train() (end-of-training "
              "evaluation, which step-based eval strategies add, and the final checkpoint); evaluation inside the measured "
              "steps; peak resident memory of the whole process.", "",
              "| task | side | total s | outside train() s | after last step s (eval) | eval in measured steps s | process peak MiB |",
              "|---|---|--:|--:|--:|--:|--:|"]
    for c in res["tasks"]:
        for name, x in c["sides"].items():
            lines.append(f"| {c['task']} | {name} | {_f(x['total_s'])} | {_f(x['outside_loop_s'])} | {_f(x['loop_tail_s'])} "
                         f"({_f(x['eval_at_end_s'])}) | {_f(x['eval_in_loop_s'], 1)} | {_f(x['peak_process_mib'], 0)} |")
    if any(c.get("profile") for c in res["tasks"]):
        lines += ["", "Where a measured step's time goes (one more run per side under torch.profiler, CPU self time in ms per "
                  "step; the profiler's own cost per operation inflates every column a little). Ratios: TRL / llmkit. "
                  "Ceiling: TRL's step with every operation scaled by llmkit's share of TRL's positions and the optimizer and "
                  "the time outside operations unchanged, i.e. the speed-up that removing the padding can give here.", "",
                  "| task | side | positions/step | ms/step | matmul | attention | other ops | optimizer "
                  "| outside ops (Python) | ceiling |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for c in res["tasks"]:
            pr = c.get("profile")
            if not pr:
                continue
            kinds = ("total", "matmul", "attention", "other_ops", "optimizer", "outside_ops")
            for name in ("trl", "llmkit"):
                x = pr[name]
                lines.append(f"| {c['task']} | {name} | {_f(x['positions_per_step'], 0)} | "
                             + " | ".join(_f(x[k], 1) for k in kinds) + " | |")
            t, lk = pr["trl"], pr["llmkit"]
            lines.append(f"| {c['task']} | TRL / llmkit | {_f(_ratio(t['positions_per_step'], lk['positions_per_step']), 2)} | "
                         + " | ".join(_f(_ratio(t[k], lk[k]), 2) for k in kinds) + f" | **{_f(pr['ceiling'], 2)}** |")
    slower = [f"{c['task']} ({r['side']})" for c in res["tasks"] for r in c["rows"][:1] if r["speed"] == "slower"]
    lines += ["", f"ratio > 1: llmkit faster than the plain TRL script; 'vs llmkit default': the lever row's tokens/s over "
              f"llmkit's default row; 'per CPU-second': the same ratios of tokens per second of the process's CPU time over "
              f"the measured steps (one torch thread: the work itself, which other processes on a busy machine distort far "
              f"less than wall time). Ratios within ±{int(res['noise_band'] * 100)} % count as the same speed. Held-out "
              f"loss: the stage's evaluation after the last step on its held-out split (the same rows in every llmkit row); "
              f"Δ is relative to llmkit's default row, tolerance {100 * res.get('loss_tolerance', 0.03):.0f} %. "
              + (f"**llmkit (defaults) is slower on: {', '.join(slower)}.**" if slower else "llmkit (defaults) is not slower on any task.")]
    busy = [x for x in (m["load_average_at_start"] or [])[:1] + (res.get("load_average_at_end") or [])[:1] if x >= 0.7]
    if busy:
        loads = ", ".join(f"{x:.1f}" for x in busy)
        if res.get("threads") == 1:
            lines += ["", f"Note: the machine was busy (1-minute load average {loads} at start/end). Every run used one torch "
                      "thread, which keeps the ratios usable on a shared machine, but the absolute numbers are below what "
                      "a quiet machine gives."]
        else:
            lines += ["", f"**Warning: the machine was busy (1-minute load average {loads} at start/end); with several torch "
                      "threads a busy CPU can slow a step many times over, so these numbers are not a measurement. Re-run on "
                      "a quiet machine, or with --threads 1.**"]
    return "\n".join(lines)


def plot(res: dict, png: Path) -> None:
    """tokens/s of every llmkit row over plain TRL (bars, with the min–max of the runs as error
    bars; diamonds: the same ratio per CPU-second) and the padding share of both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, speed, cpu, err, pad_lk, pad_tr = [], [], [], [[], []], [], []
    for c in res["tasks"]:
        tr = c["sides"]["trl"]
        for row in c["rows"]:
            x = c["sides"][row["side"]]
            labels.append(c["task"] + ("" if row["side"] == "llmkit" else "\n" + row["side"].removeprefix("llmkit ")))
            r = row["tokens_per_s_ratio"] or 0
            speed.append(r)
            cpu.append(row.get("tokens_per_cpu_s_ratio"))
            lo = hi = r
            if x["tokens_per_s_spread"] and tr["tokens_per_s_spread"]:  # slowest llmkit over fastest TRL, and the reverse
                lo = x["tokens_per_s_spread"][0] / tr["tokens_per_s_spread"][2]
                hi = x["tokens_per_s_spread"][2] / tr["tokens_per_s_spread"][0]
            err[0].append(max(0.0, r - lo))
            err[1].append(max(0.0, hi - r))
            pad_lk.append(100 * (x["padding_fraction"] or 0))
            pad_tr.append(100 * (tr["padding_fraction"] or 0))
    xs = list(range(len(labels)))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(1.1 * len(labels) + 3, 7), sharex=True)
    bars = ax.bar(xs, speed, 0.6, yerr=err, capsize=3, color=["#2b7bba" if "\n" not in lb else "#8fb8de" for lb in labels])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    if any(v is not None for v in cpu):
        ax.plot([i for i, v in zip(xs, cpu) if v is not None], [v for v in cpu if v is not None], "D", color="black", ms=5,
                label="per CPU-second of the process")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(1.5, color="#2b7bba", lw=0.8, ls="--", label="goal 1.5x")
    ax.set_ylabel("tokens/s, llmkit / plain TRL")
    ax.set_title(f"llmkit vs plain TRL, CPU, {res['steps']} steps per run (dark: llmkit's defaults; light: one lever switched)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    w = 0.38
    ax2.bar([i - w / 2 for i in xs], pad_lk, w, label="llmkit", color="#2b7bba")
    ax2.bar([i + w / 2 for i in xs], pad_tr, w, label="plain TRL", color="#e08a2c")
    ax2.set_ylabel("padding, % of positions")
    ax2.set_xticks(xs, labels, fontsize=7)
    ax2.legend(fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--only", default=",".join(TASKS), help=f"comma-separated tasks (default: all of {', '.join(TASKS)})")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run; step 1 is the warm-up (default 30)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, alternating order; medians reported (default 2)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--noise-band", type=float, default=0.05, help="ratio band counted as 'same speed' (default 0.05)")
    ap.add_argument("--loss-tolerance", type=float, default=0.03,
                    help="relative held-out loss difference of a lever row from llmkit's default row that still counts as "
                         "the same training (default 0.03)")
    ap.add_argument("--levers", default=DEFAULT_LEVERS,
                    help=f"comma-separated levers to add a row for, in the state llmkit does not choose ({', '.join(LEVERS)}; "
                         f"default {DEFAULT_LEVERS}; 'none' for none)")
    ap.add_argument("--threads", type=int, help="torch threads in every run (default: torch's own, one per core)")
    ap.add_argument("--llmkit-extra", default="", help="extra llmkit overrides for diagnosis, e.g. '--eval_split_size 0' "
                    "(recorded in the results; the default measures llmkit as users run it)")
    ap.add_argument("--profile", action="store_true",
                    help="per task (not grpo) one more run of llmkit's defaults and of the script under torch.profiler: "
                         "where a step's time goes (matrix products, attention, optimizer, other operations, Python) and "
                         "the ceiling that leaves for removing padding (not counted in the medians)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.tasks = [t.strip() for t in a.only.split(",") if t.strip()]
    a.lever_list = [x.strip() for x in a.levers.split(",") if x.strip() and x.strip() != "none"]
    if not a.child:
        bad = [t for t in a.tasks if t not in TASKS] + [x for x in a.lever_list if x not in LEVERS]
        if bad:
            ap.error(f"unknown task(s) or lever(s) {bad}; tasks: {', '.join(TASKS)}; levers: {', '.join(LEVERS)}")
        if a.steps < 2:
            ap.error("--steps must be at least 2 (step 1 is the warm-up)")
    return a


def main() -> int:
    a = _args()
    if a.child:
        return child(a.child)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    model = build_model()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = WORK / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": a.steps, "repeats": a.repeats,
                 "noise_band": a.noise_band, "loss_tolerance": a.loss_tolerance, "levers": a.lever_list,
                 "model": {"dir": str(model.relative_to(REPO)), **MODEL_SHAPE, "vocab_size": VOCAB, "parameters_m": None},
                 "max_length": MAX_LENGTH, "lora": LORA, "grpo": GRPO, "threads": a.threads, "llmkit_extra": a.llmkit_extra,
                 "tasks": []}
    for task in a.tasks:
        sides = [("trl", [])] + variants(task, a.lever_list)
        runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
        for r in range(a.repeats):
            k = r % len(sides)
            for name, extra in sides[k:] + sides[:k]:  # rotate which side goes first
                print(f"[{task}] {name} run {r + 1}/{a.repeats} ...", flush=True)
                row = run_side(name, task, model, a.steps, log_dir, a.threads, extra + a.llmkit_extra.split())
                runs[name].append(row)
                print(f"[{task}] {name}: {row.get('tokens_per_s')} tokens/s, {row.get('s_per_step')} s/step, padding "
                      f"{row.get('padding_fraction')}, peak {row.get('peak_train_mib')} MiB, loss {row.get('last_loss')}, "
                      f"held-out {row.get('heldout_loss')}, total {row.get('total_s')} s", flush=True)
        c = compare(task, runs, a.noise_band, a.loss_tolerance)
        if a.profile and task != "grpo":
            c["profile"] = {}
            for name in ("trl", "llmkit"):
                print(f"[{task}] {name} profiled run ...", flush=True)
                row = run_side(name, task, model, a.steps, log_dir, a.threads, [] if name == "trl" else a.llmkit_extra.split(),
                               profile=True)
                c["profile"][name] = {**row["profile"], "positions_per_step": round(row["padded_tokens"] / row["measured_steps"], 1),
                                      "tokens_per_step": row["tokens_per_step"]}
            c["profile"]["ceiling"] = profile_ceiling(c["profile"]["trl"], c["profile"]["llmkit"])
        res["tasks"].append(c)
        for row in c["rows"]:
            print(f"[{task}] {row['side']} / TRL: tokens/s x{row['tokens_per_s_ratio']} ({row['speed']}), vs llmkit default "
                  f"x{row['vs_default']}, held-out loss diff {row.get('heldout_loss_rel_diff')}", flush=True)
    res["model"]["parameters_m"] = _parameters_m(model)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["load_average_at_end"] = os.getloadavg()
    (out / "train-cpu.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (out / "train-cpu.md").write_text(md + "\n")
    plot(res, out / "train-cpu.png")
    print(md)
    print(f"\nwrote {out / 'train-cpu.json'}, {out / 'train-cpu.md'}, {out / 'train-cpu.png'}")
    return 0


def _parameters_m(model: Path) -> float:
    """Parameter count from the saved weights' shapes (no model instantiation)."""
    from safetensors import safe_open

    n = 0
    with safe_open(str(model / "model.safetensors"), "pt") as fh:
        for k in fh.keys():
            shape = fh.get_slice(k).get_shape()
            size = 1
            for d in shape:
                size *= d
            n += size
    return round(n / 1e6, 2)


if __name__ == "__main__":
    sys.exit(main())
