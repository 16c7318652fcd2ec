"""`llmkit <command>`: one sub-command per stage plus run, ls and merge.

    llmkit tokenizer|pretrain|sft|reward|dpo|ppo|grpo --config FILE.yaml [--overwrite] [--key value ...]
    llmkit <stage> --help                 every key with its default
    llmkit run RECIPE_DIR [--force] [--from STAGE] [--target STAGE]
    llmkit ls [RECIPES_DIR]
    llmkit merge ADAPTER_RUN --output_dir DIR [--dtype bfloat16] [--overwrite]

Errors in the user's input print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from llmkit.config import LlmkitError, format_help, load_stage_config

STAGES = {
    "tokenizer": "llmkit.stages.tokenizer",
    "pretrain": "llmkit.stages.pretrain",
    "sft": "llmkit.stages.sft",
    "reward": "llmkit.stages.reward",
    "dpo": "llmkit.stages.dpo",
    "ppo": "llmkit.stages.ppo",
    "grpo": "llmkit.stages.grpo",
}


def stage_module(name: str):
    if name not in STAGES:
        raise LlmkitError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[name])


def load_config_for(stage: str, config_path: str | None, overrides):
    mod = stage_module(stage)
    return mod, load_stage_config(mod.CLASSES, config_path, overrides, getattr(mod, "defaults", None))


def run_stage(stage: str, config_path: str | None, overrides=None, overwrite: bool = False) -> Path:
    mod, cfg = load_config_for(stage, config_path, overrides)
    return mod.main(cfg, overwrite=overwrite)


def _stage_command(stage: str, argv: list[str]) -> int:
    mod = stage_module(stage)
    if any(a in ("-h", "--help") for a in argv):
        print(format_help(stage, mod.CLASSES, mod.DOC))
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
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU kernel-hub notice on every import
    try:
        if argv and argv[0] in STAGES:
            return _stage_command(argv[0], argv[1:])
        args = _parser().parse_args(argv)
        if args.command == "run":
            from llmkit.pipeline import run_recipe

            run_recipe(args.recipe, force=args.force, from_stage=args.from_stage, target=args.target)
            return 0
        if args.command == "ls":
            from llmkit.pipeline import list_recipes

            list_recipes(args.recipes_dir)
            return 0
        if args.command == "merge":
            from llmkit.modeling import merge_adapter_run

            merge_adapter_run(args.adapter, args.output_dir, args.dtype, args.overwrite)
            return 0
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
