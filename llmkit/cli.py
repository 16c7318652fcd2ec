"""`llmkit <command>`: one sub-command per stage plus run, ls and merge.

    llmkit tokenizer|pretrain|sft|reward|dpo|ppo|grpo --config FILE.yaml [--overwrite] [--key value ...]
    llmkit <stage> --help                 every key with its default
    llmkit run RECIPE_DIR [--force] [--from STAGE] [--target STAGE]
    llmkit ls [RECIPES_DIR]
    llmkit merge ADAPTER_RUN --output_dir DIR [--dtype bfloat16] [--overwrite]
    llmkit serve RUN_DIR_OR_MODEL [--adapter NAME=DIR ...] [--merged] [--host H] [--port N] [--api-key KEY] [-- SERVER ARGS]
    llmkit serve --config serve.yaml [--key value ...]    llmkit serve --help lists every key
    llmkit chat RUN_DIR_OR_URL [--model NAME] [--api-key KEY] [--system TEXT]
    llmkit eval RUN_DIR_OR_MODEL [--tasks es] [--engine auto|vllm|transformers|server] [--limit N] ...
    llmkit eval --compare RESULTS_DIR RESULTS_DIR ...    |    llmkit eval --recipe RECIPE_DIR
    llmkit report RECIPE_OR_RUNS_DIR     the report card: report.md + report.html
    llmkit download RECIPE_DIR [--eval] | REPO_ID   fetch into the HF cache for offline nodes

Errors in the user's input print one line and exit with status 2, without a traceback.

Libraries (transformers, datasets, vLLM, lm-eval, httpx, ...) print only warnings and errors;
`--verbose` on any command, or LLMKIT_LOG_LEVEL=INFO|DEBUG, shows their INFO (DEBUG) lines too.
llmkit's own lines are always shown.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from llmkit.config import LlmkitError, format_help
from llmkit.stages import (  # noqa: F401 - the registry; cached_stage_keys, precheck_stage_config are used by tests
    STAGES,
    cached_stage_keys,
    load_config,
    precheck_stage_config,
    run_stage,
    save_stage_keys,
    stage_module,
)

# Loggers of the libraries llmkit drives; llmkit itself prints its own lines.
LIBRARY_LOGGERS = ("transformers", "datasets", "vllm", "lm_eval", "lm-eval", "httpx", "httpcore", "openai", "urllib3",
                   "filelock", "fsspec", "huggingface_hub", "accelerate", "peft", "trl", "torch", "tokenizers", "uvicorn")
# What the child processes (vLLM server, engine core, accelerate workers) read from the environment.
_LEVEL_ENV = {"VLLM_LOGGING_LEVEL": str.upper, "TRANSFORMERS_VERBOSITY": str.lower, "DATASETS_VERBOSITY": str.lower,
              "LMEVAL_LOG_LEVEL": str.upper}
_env_set_by_llmkit: dict[str, str] = {}


VERBOSE_HELP = "also show the libraries' INFO logs (transformers, datasets, vLLM, lm-eval, httpx); or LLMKIT_LOG_LEVEL=INFO|DEBUG"


# Commands that parse their own arguments: name -> (module, function(argv) -> exit code, help line).
# The module is imported only when its command runs, so `llmkit --help` stays fast.
OWN_COMMANDS = {
    "eval": ("llmkit.evaluation.command", "eval_command",
             "score a run or model on the Spanish benchmarks (lm-evaluation-harness); llmkit eval --help lists its keys"),
    "serve": ("llmkit.serving", "serve_command",
              "serve a run (or model) behind an OpenAI-compatible API (vLLM, or llama.cpp on a GGUF); llmkit serve --help lists its keys"),
    "download": ("llmkit.download", "download_command",
                 "fetch a recipe's models and datasets (--eval: its eval tasks too) into the HF cache, for nodes without internet"),
    "export": ("llmkit.export", "export_command",
               "a run to GGUF (llama.cpp, Ollama, LM Studio: --quant f16 q8_0 q4_k_m) or a merged standalone model, with a model card"),
    "push": ("llmkit.export", "push_command", "upload a run or an export to the Hugging Face Hub (--repo_id ORG/NAME [--private])"),
    "ui": ("llmkit.ui.command", "ui_command",
           "a web page (Gradio, es/en) over recipes, runs, evaluation, chat and serving; llmkit ui --help"),
}


def library_log_level(verbose: bool = False) -> str:
    """WARNING by default; INFO with --verbose; LLMKIT_LOG_LEVEL (DEBUG, INFO, WARNING, ERROR) wins."""
    env = os.environ.get("LLMKIT_LOG_LEVEL", "").strip().upper()
    if env and env not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise LlmkitError(f"LLMKIT_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {env!r}")
    level = env or "WARNING"
    return "INFO" if verbose and level in ("WARNING", "ERROR") else level


def configure_library_logs(verbose: bool = False) -> str:
    """Set the libraries' log level, in this process and (through the environment) in the child
    processes it starts. A variable the user set (VLLM_LOGGING_LEVEL...) is left alone."""
    level = library_log_level(verbose)
    for key, case in _LEVEL_ENV.items():
        if key not in os.environ or _env_set_by_llmkit.get(key) == os.environ[key]:
            os.environ[key] = _env_set_by_llmkit[key] = case(level)
    number = getattr(logging, level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(number)
    # bitsandbytes prints a CPU kernel-hub notice on every import
    logging.getLogger("bitsandbytes").setLevel(number if level in ("INFO", "DEBUG") else logging.ERROR)
    if level in ("INFO", "DEBUG") and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # shows lm_eval's, httpx's INFO
    # libraries already imported in this process (the Python API, tests) keep their own handlers
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(number)
    if "datasets" in sys.modules:
        from datasets.utils import logging as ds_logging

        ds_logging.set_verbosity(number)
    return level


def load_config_for(stage: str, config_path: str | None, overrides):
    """(stage module, StageConfig): the registry's load_config, which reports the obvious
    mistakes (missing file, YAML syntax, malformed overrides, unknown keys from the cached key
    list) before the stage module imports torch/TRL; tests/test_early_errors.py."""
    return load_config(stage, config_path, overrides)


def _stage_command(stage: str, argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        mod = stage_module(stage)
        save_stage_keys(stage, mod)
        print(format_help(stage, mod.CLASSES, mod.DOC))
        print(f"llmkit:\n  --verbose\n      {VERBOSE_HELP}")
        return 0
    config = None
    overwrite = False
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise LlmkitError("--config needs a file")
            config = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a == "--overwrite":
            overwrite = True
        else:
            rest.append(a)
        i += 1
    run_stage(stage, config, rest, overwrite)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmkit", description="Train, align, evaluate and serve Spanish language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for s in STAGES:
        sub.add_parser(s, help=f"run the {s} stage (llmkit {s} --help lists its keys)", add_help=False)
    r = sub.add_parser("run", help="run a recipe's pipeline.yaml, skipping finished stages")
    r.add_argument("recipe", help="recipe directory (holding pipeline.yaml)")
    r.add_argument("--force", action="store_true", help="redo every stage, replacing finished runs")
    r.add_argument("--from", dest="from_stage", help="redo from this stage on")
    r.add_argument("--target", help="run only this stage and the stages it reads from")
    ls_ = sub.add_parser("ls", help="list recipes, their stages and what has been run")
    ls_.add_argument("recipes_dir", nargs="?", default="recipes")
    m = sub.add_parser("merge", help="merge a LoRA adapter run into its base and save a standalone model")
    m.add_argument("adapter", help="LoRA run directory")
    m.add_argument("--output_dir", required=True)
    m.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    m.add_argument("--overwrite", action="store_true")
    c = sub.add_parser("chat", help="chat in the terminal with a served model or a run directory")
    c.add_argument("target", help="server URL (http://127.0.0.1:8000) or anything `llmkit serve` takes")
    c.add_argument("--model", help="served model name (default: the adapter of a LoRA run — the first adapter when the "
                                   "server has several — else the first model listed)")
    c.add_argument("--api-key", default=os.environ.get("LLMKIT_API_KEY"))
    c.add_argument("--system", help="system prompt")
    c.add_argument("--max-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (default 0: greedy, the clean answers a small model gives; e.g. 0.7 for variety)")
    for name, (_, _, help_) in OWN_COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    r = sub.add_parser("report", help="the report card of a recipe's runs: report.md + report.html next to them")
    r.add_argument("target", help="a recipe directory (recipes/tiny-es) or a directory of runs (runs/tiny-es)")
    for parser in [p, *(v for k, v in sub.choices.items() if k not in STAGES)]:
        parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cut = argv.index("--") if "--" in argv else len(argv)  # serve passes what follows to the server unchanged
    verbose = "--verbose" in argv[:cut]
    argv = [a for a in argv[:cut] if a != "--verbose"] + argv[cut:]
    try:
        configure_library_logs(verbose)
        if argv and argv[0] in STAGES:
            return _stage_command(argv[0], argv[1:])
        if argv and argv[0] in OWN_COMMANDS:
            module, function, _ = OWN_COMMANDS[argv[0]]
            return getattr(importlib.import_module(module), function)(argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "run":
            from llmkit.pipeline import run_recipe
            from llmkit.report import write_after_run

            run_recipe(args.recipe, force=args.force, from_stage=args.from_stage, target=args.target)
            write_after_run(args.recipe)
            return 0
        if args.command == "ls":
            from llmkit.pipeline import list_recipes

            list_recipes(args.recipes_dir)
            return 0
        if args.command == "merge":
            from llmkit.modeling import merge_adapter_run

            merge_adapter_run(args.adapter, args.output_dir, args.dtype, args.overwrite)
            return 0
        if args.command == "report":
            from llmkit.report import write_report

            md, page = write_report(args.target)
            print(f"llmkit report: {md} and {page}")
            return 0
        if args.command == "chat":
            from llmkit.serving import chat

            return chat(args.target, args.model, args.api_key, args.system, args.max_tokens, args.temperature)
        _parser().print_help()
        return 0 if not argv else 2
    except LlmkitError as exc:
        print(f"llmkit: error: {exc}", file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("llmkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
