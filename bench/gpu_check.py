"""GPU check: llmkit's training stages against the plain TRL scripts on one GPU, in one command.

    bench/gpu_check.sh [--dry-run] [--out DIR]          # the entry point (installs, then runs this)
    python bench/gpu_check.py --out DIR [--dry-run] [--steps N] [--budget-s S] [--only RUN,...]

What it does, writing everything to --out (heavy files, models and run directories, go to --work):

1. the environment: `nvidia-smi`, the versions of every library used, which optional kernels are
   importable (flash_attn, liger_kernel, bitsandbytes);
2. models of real shapes, randomly initialised from configs (no download): Qwen2.5-0.5B's and
   Qwen2.5-1.5B's architecture (Qwen2, vocab 151936, tied embeddings), bf16, with a byte-level BPE
   tokenizer trained on the spot by `llmkit tokenizer` on data/corpus_train.jsonl (the embedding
   keeps Qwen's 151936 rows, as Qwen's own checkpoints keep more rows than their tokenizer has);
   data: data/sft_train.jsonl joined into multi-turn conversations of ~1k tokens, data/
   preferences_train.jsonl, data/math_easy_train.jsonl;
3. the runs of RUNS below, in that order, each side in its own process: `llmkit <stage>` and the
   plain TRL script of bench/trl_baselines/ with the same model, data, steps, batch, max_length,
   learning rate and LoRA settings; the variant's switches (packing, Liger, attention) are set on
   both sides. Runs whose kernel is missing are skipped with the reason; when the time budget
   (--budget-s) would be passed, the remaining runs are skipped and say so;
4. per run and side: tokens/s, s/step, peak GPU memory (torch.cuda.max_memory_allocated and
   _reserved during trainer.train()), model FLOPs utilisation, and llmkit/TRL ratios from the same
   check; results.json, results.md, one log per process under logs/.

Measurement (bench/train.py's probes, imported, plus a GPU probe here): step 1 is the warm-up;
tokens are the non-padding tokens of steps 2..N, time is from the end of step 1 to the end of step N.

MFU = model FLOPs per second / peak. Model FLOPs of a step, stated and counted from the model that
trained (its config, after any resize) and the batches it saw:
  matmuls    k * N_matmul per trained token, N_matmul = every linear layer's weights including the
             output projection (vocab x hidden, counted once even when tied; the input embedding is
             a lookup, no FLOPs); k = 6 for full training (forward 2, backward 4), 4 for LoRA/QLoRA
             (frozen weights get no weight gradient; the adapters' own FLOPs, <1 %, are left out),
             DPO adds 2 (the reference forward), LoRA DPO: 4 + 2 = 6;
  attention  per trained sequence of len tokens (a row without its padding, a document of a packed
             row, DPO's chosen and rejected rows): QK^T and AV are 4 * len^2 * heads * head_dim per
             layer forward, halved for the causal mask, times 3 for forward + backward (also with LoRA:
             the activations' gradients flow through attention): 6 * layers * heads * head_dim * len^2;
             DPO's reference forward adds a third;
  no recomputation (activation checkpointing is not model FLOPs) and no optimizer FLOPs.
Two peaks, both stated in results: dense BF16 datasheet 989.5 TFLOP/s (H100/H200 SXM) and ~790
TFLOP/s, what a large bf16 matmul reaches on such a machine (--peak-measured to change it; the
check also times a 8192^3 bf16 matmul and reports what this GPU reaches). GRPO's steps are mostly
generation: its MFU is reported over the training forwards/backwards only and marked as such.

--dry-run: the same script end to end on the CPU with tiny shapes, 3 steps and a subset of the runs
(tests/test_gpu_check.py), so that it is known to work before GPU time is spent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import train as bench_train  # noqa: E402  (bench/train.py: the probes and their summary)

PEAK_DATASHEET = 989.5  # TFLOP/s, dense BF16, H100/H200 SXM datasheet (1979 with 2:4 sparsity)
PEAK_MEASURED = 790.0  # TFLOP/s, a large bf16 GEMM on such a machine

# architecture of the two Qwen2.5 checkpoints (their config.json), random weights
SHAPES = {
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                     "max_position_embeddings": 32768, "rms_norm_eps": 1e-6},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
                     "max_position_embeddings": 32768, "rms_norm_eps": 1e-6},
}
# --dry-run: same architecture, tiny (vocab = the tokenizer's)
DRY_SHAPES = {
    "qwen2.5-0.5b": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": None, "tie_word_embeddings": True, "max_position_embeddings": 1024},
    "qwen2.5-1.5b": {"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": None, "tie_word_embeddings": True, "max_position_embeddings": 1024},
}
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target_modules": "all-linear"}

# name: model, llmkit stage, TRL script, data, per-device batch, lr, lora, variant switches, needs, in dry run
#   variant switches are set on both sides: packing (TRL's BFD packing, padding-free), liger, attention
RUNS = [
    ("sft_lora", "qwen2.5-0.5b", "sft", "sft.py", "sft", 8, 2e-4, True, {}, (), True),
    ("sft_full", "qwen2.5-0.5b", "sft", "sft.py", "sft", 8, 2e-5, False, {}, (), False),
    ("sft_full_packed", "qwen2.5-0.5b", "sft", "sft.py", "sft", 8, 2e-5, False, {"packing": True}, (), True),
    ("sft_full_liger", "qwen2.5-0.5b", "sft", "sft.py", "sft", 8, 2e-5, False, {"liger": True}, ("cuda", "liger_kernel"), True),
    ("dpo_lora", "qwen2.5-0.5b", "dpo", "dpo.py", "prefs", 8, 5e-6, True, {}, (), True),
    ("grpo_lora", "qwen2.5-0.5b", "grpo", "grpo.py", "math", 16, 1e-5, True, {}, (), True),
    ("sft_full_1.5b", "qwen2.5-1.5b", "sft", "sft.py", "sft", 8, 2e-5, False, {}, (), False),
    ("sft_full_packed_liger", "qwen2.5-0.5b", "sft", "sft.py", "sft", 8, 2e-5, False, {"packing": True, "liger": True},
     ("cuda", "liger_kernel"), False),
    ("sft_full_packed_fa2", "qwen2.5-0.5b", "sft", "sft.py", "sft", 8, 2e-5, False,
     {"packing": True, "attention": "flash_attention_2"}, ("cuda", "flash_attn"), False),
    ("sft_lora_liger", "qwen2.5-0.5b", "sft", "sft.py", "sft", 8, 2e-4, True, {"liger": True}, ("cuda", "liger_kernel"), False),
    ("sft_lora_1.5b", "qwen2.5-1.5b", "sft", "sft.py", "sft", 8, 2e-4, True, {}, (), False),
    ("sft_full_liger_1.5b", "qwen2.5-1.5b", "sft", "sft.py", "sft", 8, 2e-5, False, {"liger": True}, ("cuda", "liger_kernel"), False),
    ("sft_qlora", "qwen2.5-0.5b", "sft", None, "sft", 8, 2e-4, True, {"qlora": True}, ("cuda", "bitsandbytes"), False),
]
GRPO = {"num_generations": 8, "max_completion_length": 64}


def grpo_settings(dry: bool) -> dict:
    """2 prompts x 8 completions of <= 64 tokens per step; the dry run: 4 prompts x 4 of <= 8."""
    return {"num_generations": 4, "max_completion_length": 8} if dry else GRPO


# --------------------------------------------------------------------------- environment

def _sh(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return r.stdout + r.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cmd[0]}: {exc}"


def environment(cwd: Path) -> dict:
    """Versions and kernels in a child process (the parent never touches CUDA)."""
    code = r"""
import importlib, importlib.metadata as md, importlib.util, json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(), "versions": {}}
for d in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "liger-kernel", "flash-attn",
          "bitsandbytes", "triton", "vllm", "pyarrow", "pandas", "xxhash", "numpy", "llmkit"):
    try:
        out["versions"][d] = md.version(d)
    except md.PackageNotFoundError:
        out["versions"][d] = None
out["importable"] = {m: importlib.util.find_spec(m) is not None for m in ("flash_attn", "liger_kernel", "bitsandbytes")}
import llmkit, trl, datasets
out["module_paths"] = {m.__name__: m.__file__ for m in (llmkit, trl, datasets)}
import torch
out["cuda"] = torch.cuda.is_available()
out["torch_cuda"] = torch.version.cuda
if out["cuda"]:
    p = torch.cuda.get_device_properties(0)
    out["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": list(torch.cuda.get_device_capability(0)),
                  "count": torch.cuda.device_count(), "bf16": torch.cuda.is_bf16_supported()}
    import time
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16); b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(); t = time.perf_counter(); reps = 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    out["bf16_gemm_tflops"] = round(2 * n**3 * reps / (time.perf_counter() - t) / 1e12, 1)
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(f"gpu_check: the environment check failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def skip_reason(needs: tuple[str, ...], env: dict) -> str | None:
    for n in needs:
        if n == "cuda" and not env["cuda"]:
            return "needs a CUDA GPU"
        if n != "cuda" and not env["importable"].get(n):
            return f"{n} is not importable here"
    return None


# --------------------------------------------------------------------------- models and data

def build(work: Path, dry: bool) -> dict[str, Path]:
    """The tokenizer (llmkit tokenizer), the random models and the data sets, once per --work."""
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        shutil.rmtree(tok, ignore_errors=True)
        shutil.rmtree(f"{tok}.partial", ignore_errors=True)
        _run_llmkit(["tokenizer", "--output_dir", str(tok), "--datasets", str(REPO / "data/corpus_train.jsonl"),
                     "--vocab_size", "1000" if dry else "8000"], work)
    shapes = DRY_SHAPES if dry else SHAPES
    models = {}
    for name, shape in shapes.items():
        d = work / f"model-{name}"
        models[name] = d
        if (d / "config.json").is_file() and _same_shape(d / "config.json", shape):
            continue
        shutil.rmtree(d, ignore_errors=True)
        code = f"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config
tok = AutoTokenizer.from_pretrained({str(tok)!r})
shape = {shape!r}
if shape["vocab_size"] is None:
    shape["vocab_size"] = len(tok)
cfg = Qwen2Config(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape)
cuda = torch.cuda.is_available()
dtype = torch.bfloat16 if cuda else torch.float32
torch.manual_seed(0)
with torch.device("cuda" if cuda else "cpu"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
print(f"{name}: {{sum(p.numel() for p in model.parameters()) / 1e6:.1f}}M parameters, {{dtype}}", flush=True)
model.save_pretrained({str(d)!r})
tok.save_pretrained({str(d)!r})
"""
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    data = work / "data"
    data.mkdir(exist_ok=True)
    rows = [json.loads(x) for x in (REPO / "data/sft_train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    rows = rows[:200] if dry else rows
    per = 2 if dry else 12  # conversations joined into one multi-turn conversation (~1k tokens of this tokenizer)
    convs = [{"messages": [m for r in rows[i:i + per] for m in r["messages"]]} for i in range(0, len(rows) - per + 1, per)]
    _write_jsonl(data / "sft.jsonl", convs)
    shutil.copy(REPO / "data/preferences_train.jsonl", data / "prefs.jsonl")
    shutil.copy(REPO / "data/math_easy_train.jsonl", data / "math.jsonl")
    return {"tokenizer": tok, **models, "sft": data / "sft.jsonl", "prefs": data / "prefs.jsonl", "math": data / "math.jsonl"}


def _same_shape(config: Path, shape: dict) -> bool:
    """A model left by an earlier check is reused only if it has the shape asked for."""
    cfg = json.loads(config.read_text())
    return cfg.get("model_type") == "qwen2" and all(cfg.get(k) == v for k, v in shape.items() if v is not None)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _run_llmkit(argv: list[str], cwd: Path) -> None:
    code = "import sys; from llmkit.cli import main; sys.exit(main(sys.argv[1:]))"
    subprocess.run([sys.executable, "-c", code, *argv], check=True, cwd=cwd)


# --------------------------------------------------------------------------- the two sides of a run

def llmkit_argv(run: tuple, paths: dict, out: Path, steps: int, max_length: int, dry: bool) -> list[str]:
    name, model, stage, _, data, batch, lr, lora, var, _, _ = run
    argv = [stage, "--model_name_or_path", str(paths[model]), "--datasets", str(paths[data]), "--output_dir", str(out),
            "--max_steps", str(steps), "--per_device_train_batch_size", str(batch), "--learning_rate", str(lr),
            "--eval_split_size", "0", "--save_strategy", "no"]
    argv += ["--max_length", str(max_length)] if stage in ("sft", "dpo") else []
    argv += ["--sample_prompts", "0"] if stage == "sft" else []
    if stage == "grpo":
        argv += [x for k, v in grpo_settings(dry).items() for x in (f"--{k}", str(v))]
        argv += ["--eval_max_new_tokens", "4"] if dry else []
    if lora:
        argv += ["--use_peft", "true"] + [x for k, v in LORA.items() for x in (f"--{k}", str(v))]
    if var.get("qlora"):
        argv += ["--load_in_4bit", "true"]
    if stage == "sft":
        argv += ["--packing", "true" if var.get("packing") else "false"]
    argv += ["--use_liger_kernel", "true" if var.get("liger") else "false"]  # llmkit turns Liger on by itself when installed
    if var.get("attention"):
        argv += ["--attn_implementation", var["attention"]]
    return argv


def trl_argv(run: tuple, paths: dict, out: Path, steps: int, max_length: int, dry: bool) -> list[str]:
    name, model, stage, _, data, batch, lr, lora, var, _, _ = run
    argv = ["--model", str(paths[model]), "--data", str(paths[data]), "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", str(batch), "--learning_rate", str(lr), "--max_length", str(max_length)]
    if stage == "grpo":
        argv += [x for k, v in grpo_settings(dry).items() for x in (f"--{k}", str(v))]
    if lora:
        argv += [x for k, v in LORA.items() for x in (f"--{k}", str(v))]
    return argv


def trl_config(run: tuple, cuda: bool) -> dict:
    """What replaces bench/trl_baselines/_cli.CPU (the settings a CPU needs) in the TRL script's
    config: on a GPU nothing but the variant's switches, i.e. TRL's own defaults (bf16, ...)."""
    stage, var = run[2], run[8]
    cfg: dict = {} if cuda else dict(bench_train_cli_cpu())
    cfg["save_strategy"] = "no"
    if stage == "sft":
        cfg["packing"] = bool(var.get("packing"))
    cfg["use_liger_kernel"] = bool(var.get("liger"))
    if var.get("attention"):
        cfg["model_init_kwargs"] = {"attn_implementation": var["attention"]}
    return cfg


def bench_train_cli_cpu() -> dict:
    sys.path.insert(0, str(bench_train.BASELINES))
    import _cli

    return dict(_cli.CPU)


# --------------------------------------------------------------------------- child: one measured process

def install_gpu_probe(rec: dict) -> None:
    """Wraps transformers.Trainer (before bench/train.py's probes wrap it again): peak GPU memory
    during trainer.train(), the model's FLOP-relevant shape, and sum(len^2) over trained sequences."""
    import torch
    import transformers
    from transformers import TrainerCallback

    rec.update(len2=0, seqs=0, in_train=False, len2_steps=[])

    class GpuProbe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                rec["cuda_mem_train_start"] = torch.cuda.memory_allocated()
            rec["in_train"] = True

        def on_step_end(self, args, state, control, **kw):
            rec["len2_steps"].append((rec["len2"], rec["seqs"]))

        def on_train_end(self, args, state, control, **kw):
            rec["in_train"] = False
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                rec["cuda_peak_allocated"] = torch.cuda.max_memory_allocated()
                rec["cuda_peak_reserved"] = torch.cuda.max_memory_reserved()

    init = transformers.Trainer.__init__

    def patched_init(self, *a, **k):
        init(self, *a, **k)
        cfg = self.model.config
        rec["model"] = {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                           "num_attention_heads", "num_key_value_heads", "vocab_size",
                                                           "tie_word_embeddings")}
        rec["model"]["head_dim"] = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rec["model"]["parameters"] = sum(p.numel() for p in self.model.parameters())
        rec["model"]["dtype"] = str(next(self.model.parameters()).dtype)
        rec["model"]["attn_implementation"] = getattr(cfg, "_attn_implementation", None)
        rec["peft"] = hasattr(self.model, "peft_config")
        rec["quantized"] = bool(getattr(self.model, "is_loaded_in_4bit", False) or getattr(cfg, "quantization_config", None))
        rec["liger"] = bool(getattr(self.args, "use_liger_kernel", False))
        rec["gradient_checkpointing"] = bool(getattr(self.args, "gradient_checkpointing", False))
        self.add_callback(GpuProbe())
        compute_loss = self.compute_loss

        def counted(model, inputs, *a, **k):
            if rec["in_train"] and torch.is_grad_enabled():
                lens = sequence_lengths(inputs)
                rec["len2"] += sum(x * x for x in lens)
                rec["seqs"] += len(lens)
            return compute_loss(model, inputs, *a, **k)

        self.compute_loss = counted

    transformers.Trainer.__init__ = patched_init


def sequence_lengths(inputs) -> list[int]:
    """Lengths of the sequences attention runs over: rows without their padding; the documents of a
    padding-free (packed) row, split where position_ids restart at 0; DPO's chosen and rejected rows."""
    if not hasattr(inputs, "keys"):
        return []
    if "position_ids" in inputs and "input_ids" in inputs and inputs["input_ids"].shape[0] == 1:
        pos = inputs["position_ids"].reshape(-1).tolist()
        lens, cur = [], 0
        for p in pos:
            if p == 0 and cur:
                lens.append(cur)
                cur = 0
            cur += 1
        lens.append(cur)
        return [x for x in lens if x > 1]  # a padding tail is a run of zeros: length-1 pieces
    for key in ("attention_mask", "chosen_attention_mask"):
        if key in inputs:
            return [int(x) for x in inputs[key].sum(-1).reshape(-1).tolist()]
    if "prompt_mask" in inputs and "completion_mask" in inputs:  # GRPO
        return [int(x) for x in (inputs["prompt_mask"].sum(-1) + inputs["completion_mask"].sum(-1)).tolist()]
    if "input_ids" in inputs:
        ids = inputs["input_ids"]
        return [ids.shape[-1]] * (ids.numel() // ids.shape[-1])
    return []


def child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    rec: dict = {}
    install_gpu_probe(rec)
    if spec["side"] == "trl":  # the baseline scripts read the CPU settings from _cli.CPU: replace them
        sys.path.insert(0, str(bench_train.BASELINES))
        import _cli

        _cli.CPU = spec["trl_config"]
    rc = bench_train.child(json.dumps(spec))
    res = json.loads(Path(spec["result"]).read_text())
    steps = rec.get("len2_steps") or []
    if len(steps) >= 2:
        res["attn_len2"] = steps[-1][0] - steps[0][0]
        res["sequences"] = steps[-1][1] - steps[0][1]
    for k in ("model", "peft", "quantized", "liger", "gradient_checkpointing", "cuda_peak_allocated", "cuda_peak_reserved",
              "cuda_mem_train_start"):
        res[k] = rec.get(k)
    Path(spec["result"]).write_text(json.dumps(res, indent=2))
    return rc


# --------------------------------------------------------------------------- FLOPs and MFU

def matmul_params(m: dict) -> int:
    """Weights of every linear layer, the output projection included (once, tied or not)."""
    d, i, L, h, kv, hd, v = (m[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                            "num_key_value_heads", "head_dim", "vocab_size"))
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    mlp = 3 * d * i
    return L * (attn + mlp) + v * d


def flops(res: dict, stage: str) -> dict | None:
    """Model FLOPs of the measured steps (see the module docstring) and their split."""
    m = res.get("model")
    if not m or not res.get("tokens") or res.get("measured_s") is None:
        return None
    n = matmul_params(m)
    lora = bool(res.get("peft"))
    k = 4 if lora else 6
    if stage == "dpo":
        k += 2  # the reference model's forward (the disabled adapter, or a frozen copy)
    matmul = k * n * res["tokens"]
    attention = 6 * m["num_hidden_layers"] * m["num_attention_heads"] * m["head_dim"] * (res.get("attn_len2") or 0)
    if stage == "dpo":
        attention *= 4 / 3  # + the reference forward (forward is a third of forward + backward)
    total = matmul + attention
    return {"matmul_params": n, "flops_per_token_factor": k, "matmul_flops": matmul, "attention_flops": attention,
            "total_flops": total, "tflops_per_s": total / res["measured_s"] / 1e12}


def with_mfu(res: dict, stage: str, peaks: dict[str, float]) -> dict:
    f = flops(res, stage)
    res["flops"] = f
    res["mfu"] = {name: float(f"{f['tflops_per_s'] / p:.4g}") for name, p in peaks.items()} if f else None
    return res


# --------------------------------------------------------------------------- parent

def run_side(side: str, run: tuple, paths: dict, a, env: dict, logs: Path, work: Path) -> dict:
    name = run[0]
    out = work / "runs" / f"{name}-{side}"
    for p in (out, Path(f"{out}.partial")):
        shutil.rmtree(p, ignore_errors=True)
    result = logs / f"{name}-{side}.json"
    result.unlink(missing_ok=True)
    if side == "llmkit":
        spec = {"side": side, "task": name, "out": str(out), "argv": llmkit_argv(run, paths, out, a.steps, a.max_length, a.dry_run)}
    else:
        spec = {"side": side, "task": name, "script": str(bench_train.BASELINES / run[3]),
                "argv": trl_argv(run, paths, out, a.steps, a.max_length, a.dry_run), "trl_config": trl_config(run, env["cuda"])}
    spec["result"] = str(result)
    spec["threads"] = a.threads
    penv = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_DATASETS_CACHE": str(work / "hf-datasets-cache"),
            }
    log = logs / f"{name}-{side}.log"
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=work, env=penv,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=a.run_timeout_s)
    wall = round(time.perf_counter() - t, 1)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}.partial", ignore_errors=True)
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace").splitlines()[-12:]
        return {"side": side, "status": "failed", "exit": proc.returncode, "process_s": wall, "log": str(log.relative_to(a.out)),
                "log_tail": tail}
    res = json.loads(result.read_text())
    res.update(status="ok", process_s=wall, log=str(log.relative_to(a.out)))
    return with_mfu(res, run[2], a.peaks)


def summary_row(name: str, run: tuple, sides: dict) -> dict:
    lk, tr = sides.get("llmkit") or {}, sides.get("trl") or {}

    def ratio(key):
        x, y = lk.get(key), tr.get(key)
        return round(x / y, 3) if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None

    def gib(x):
        return round(x / 2**30, 2) if isinstance(x, (int, float)) else None

    for s in (lk, tr):
        if s.get("status") == "ok":
            s["cuda_peak_allocated_gib"] = gib(s.get("cuda_peak_allocated"))
            s["cuda_peak_reserved_gib"] = gib(s.get("cuda_peak_reserved"))
    return {"run": name, "model": run[1], "stage": run[2], "lora": run[7], "variant": run[8],
            "tokens_per_s_ratio": ratio("tokens_per_s"), "s_per_step_ratio": ratio("s_per_step"),
            "cuda_peak_allocated_ratio": ratio("cuda_peak_allocated"), "peak_train_rss_ratio": ratio("peak_train_mib"), **sides}


def markdown(res: dict) -> str:
    env = res["environment"]
    gpu = env.get("gpu") or {}
    peaks = res["peaks_tflops"]
    lines = [f"# llmkit GPU check{' (DRY RUN on CPU: tiny shapes, numbers mean nothing)' if res['dry_run'] else ''}", "",
             f"{gpu.get('name', 'no GPU')} ({gpu.get('memory_gib', '–')} GiB), torch {env['versions'].get('torch')} "
             f"(CUDA {env.get('torch_cuda')}), transformers {env['versions'].get('transformers')}, trl {env['versions'].get('trl')}, "
             f"peft {env['versions'].get('peft')}, liger-kernel {env['versions'].get('liger-kernel')}, flash-attn "
             f"{env['versions'].get('flash-attn')}; a {8192}^3 bf16 matmul: {env.get('bf16_gemm_tflops', '–')} TFLOP/s.",
             f"{res['steps']} optimizer steps per run (step 1 is the warm-up), max_length {res['max_length']}. MFU = model "
             f"FLOPs/s (6·N per token full, 4·N LoRA, +2·N DPO's reference; + causal attention; no recomputation) / "
             + " or ".join(f"{p} TFLOP/s ({k})" for k, p in peaks.items()) + ".", "",
             "| run | side | tokens/s | s/step | peak GPU GiB (alloc / reserved) | TFLOP/s | MFU " + " / ".join(peaks) +
             " | llmkit/TRL tokens/s | llmkit/TRL peak GPU |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]

    def f(x, nd=1):
        return "–" if x is None else f"{x:,.{nd}f}"

    for r in res["runs"]:
        if r.get("skipped"):
            lines.append(f"| {r['run']} | – | skipped: {r['skipped']} | | | | | | |")
            continue
        for side in ("llmkit", "trl"):
            s = r.get(side)
            if not s:
                continue
            first = side == "llmkit" or "llmkit" not in r
            if s.get("status") != "ok":
                lines.append(f"| {r['run']} | {side} | FAILED (exit {s.get('exit')}, {s.get('log')}) | | | | | | |")
                continue
            mfu = " / ".join(f"{100 * v:.3g} %" for v in s["mfu"].values()) if s.get("mfu") else "–"
            if r["stage"] == "grpo" and s.get("mfu"):
                mfu += " (training part; steps are mostly generation)"
            lines.append(f"| {r['run']} | {side} | {f(s.get('tokens_per_s'), 0)} | {f(s.get('s_per_step'), 3)} | "
                         f"{f(s.get('cuda_peak_allocated_gib'), 2)} / {f(s.get('cuda_peak_reserved_gib'), 2)} | "
                         f"{f((s.get('flops') or {}).get('tflops_per_s'), 1)} | {mfu} | "
                         f"{('**' + f(r['tokens_per_s_ratio'], 2) + '**') if first else ''} | "
                         f"{f(r['cuda_peak_allocated_ratio'], 2) if first else ''} |")
    budget = "none" if res["budget_s"] is None else f"{res['budget_s']:.0f} s"
    lines += ["", f"Total wall time {res['wall_s']} s (budget {budget}). Logs: logs/; everything: results.json."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--out", help="folder for everything the check reports (required)")
    ap.add_argument("--work", help="folder for models and run directories, kept out of --out "
                    "(default /tmp/llmkit-gpu-check/work, or work-dry)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, 3 steps, a subset of the runs")
    ap.add_argument("--steps", type=int, help="optimizer steps per run (default 12; dry run 3)")
    ap.add_argument("--max-length", type=int, help="max_length (default 1024; dry run 128)")
    ap.add_argument("--budget-s", type=float, help="skip the remaining runs when the next would end past this many seconds "
                    "from the start (default 400; none in the dry run, whose result must not depend on the machine's speed)")
    ap.add_argument("--run-timeout-s", type=float, default=240, help="kill one process after this long (default 240)")
    ap.add_argument("--only", help="comma-separated run names (default: all)")
    ap.add_argument("--peak-measured", type=float, default=PEAK_MEASURED)
    ap.add_argument("--threads", type=int, help="torch threads per process (dry run: 1)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child)
    if not a.out:
        ap.error("--out is required")
    t0 = time.perf_counter()
    a.steps = a.steps or (3 if a.dry_run else 12)
    a.max_length = a.max_length or (128 if a.dry_run else 1024)
    a.threads = a.threads or (1 if a.dry_run else None)
    a.budget_s = a.budget_s or (float("inf") if a.dry_run else 400.0)
    a.peaks = {"datasheet": PEAK_DATASHEET, "measured": a.peak_measured}
    if a.steps < 2:
        ap.error("--steps must be at least 2 (step 1 is the warm-up)")
    names = {r[0] for r in RUNS}
    only = [x.strip() for x in a.only.split(",")] if a.only else None
    if only and set(only) - names:
        ap.error(f"unknown run(s) {sorted(set(only) - names)}; choose from {', '.join(r[0] for r in RUNS)}")
    a.out = Path(a.out).resolve()
    work = Path(a.work).resolve() if a.work else Path("/tmp/llmkit-gpu-check") / ("work-dry" if a.dry_run else "work")
    logs = a.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # no log of an earlier check is mistaken for this one's
    for d in (a.out, work, logs):
        d.mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    (a.out / "nvidia-smi.txt").write_text(_sh(["nvidia-smi"]) + "\n" + _sh(["nvidia-smi", "-q", "-d", "CLOCK,POWER,MEMORY"]))
    env = environment(work)  # not from the repository root: the llmkit that the runs import
    (a.out / "environment.json").write_text(json.dumps(env, indent=2))
    print(f"gpu_check: {env.get('gpu', {}).get('name', 'no GPU')}; torch {env['versions']['torch']}, trl {env['versions']['trl']}, "
          f"llmkit from {env['module_paths']['llmkit']}", flush=True)
    if not env["cuda"] and not a.dry_run:
        raise SystemExit("gpu_check: no CUDA GPU here; use --dry-run on a CPU machine")
    paths = build(work, a.dry_run)
    print(f"gpu_check: models and data ready after {time.perf_counter() - t0:.0f} s", flush=True)
    res: dict = {"dry_run": a.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": a.steps, "max_length": a.max_length,
                 "budget_s": None if a.budget_s == float("inf") else a.budget_s, "peaks_tflops": a.peaks, "lora": LORA, "grpo": GRPO, "environment": env,
                 "models": {k: str(v) for k, v in paths.items()}, "runs": []}
    durations: list[float] = []
    for run in RUNS:
        name, needs, in_dry = run[0], run[9], run[10]
        if only and name not in only:
            continue
        reason = skip_reason(needs, env)
        if reason is None and a.dry_run and not in_dry and not only:
            reason = "not in the dry run (the same code path as a run that is)"
        sides = ["llmkit"] + (["trl"] if run[3] else [])
        if reason is None and durations:
            expected = max(durations) * len(sides)
            if time.perf_counter() - t0 + expected > a.budget_s:
                reason = f"time budget: {time.perf_counter() - t0:.0f} s spent, ~{expected:.0f} s more needed, budget {a.budget_s:.0f} s"
        if reason:
            print(f"[{name}] skipped: {reason}", flush=True)
            res["runs"].append({"run": name, "model": run[1], "stage": run[2], "skipped": reason})
            continue
        got = {}
        for side in sides:
            print(f"[{name}] {side} ...", flush=True)
            t = time.perf_counter()
            try:
                got[side] = run_side(side, run, paths, a, env, logs, work)
            except subprocess.TimeoutExpired:
                got[side] = {"side": side, "status": "failed", "exit": "timeout", "log": f"logs/{name}-{side}.log"}
            durations.append(time.perf_counter() - t)
            s = got[side]
            print(f"[{name}] {side}: {s.get('status')} {s.get('tokens_per_s')} tokens/s, {s.get('s_per_step')} s/step, "
                  f"peak GPU {s.get('cuda_peak_allocated')} B, MFU {s.get('mfu')}", flush=True)
        row = summary_row(name, run, got)
        res["runs"].append(row)
        print(f"[{name}] llmkit/TRL tokens/s x{row['tokens_per_s_ratio']}", flush=True)
        (a.out / "results.json").write_text(json.dumps(res, indent=2))  # partial results survive a kill
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (a.out / "results.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (a.out / "results.md").write_text(md + "\n")
    print(md)
    failed = [f"{r['run']} ({s})" for r in res["runs"] for s in ("llmkit", "trl") if (r.get(s) or {}).get("status") == "failed"]
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
