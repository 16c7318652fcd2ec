"""`llmkit eval RUN_DIR_OR_MODEL [--config eval.yaml] [--key value ...]`: score a run (or any
model) on the Spanish benchmarks with lm-evaluation-harness.

Its keys are EvalArgs' (llmkit/evaluation/runner.py), read as a stage's are: from an eval
config file (`--config`), then `--key value` overrides, unknown keys refused with the closest
valid names, values typed against the fields.  The target may also be given as `target:` in
the file or `--target`.

    llmkit eval runs/tiny-es/sft --tasks es_beto --limit 50
    llmkit eval --config eval.yaml --engine transformers
    llmkit eval --compare RESULTS_DIR RESULTS_DIR ... [--output_dir DIR]
    llmkit eval --recipe recipes/tiny-es [--force] [--key value ...]   every finished stage (its eval.yaml), compared

Outputs (in output_dir): results.json (every task and metric with standard error, engine and
settings, versions, wall time), report.md and results.png, samples/ with --log_samples, and
manifest.json, written last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmkit.config import LlmkitError, format_help

USAGE = "usage: llmkit eval [RUN_DIR_OR_MODEL] [--config FILE.yaml] [--key value ...] | --compare RESULTS ... | --recipe DIR"
COMMAND_HELP = """llmkit eval:
  --config FILE.yaml, -c FILE.yaml
      Read the keys above from a YAML file; --key value on the command line wins.
  --compare RESULTS [RESULTS ...]
      Compare earlier evaluations side by side (compare.md, compare.png in --output_dir).
  --recipe DIR
      Evaluate every finished stage of a recipe with its eval.yaml and compare them; --key value overrides its settings.
  --force
      With --recipe: evaluate again stages already evaluated.
  --verbose
      Also show the libraries' INFO logs (transformers, datasets, vLLM, lm-eval, httpx); or LLMKIT_LOG_LEVEL=INFO|DEBUG."""

_TRUTH = ("true", "false", "yes", "no")


@dataclass
class EvalCommand:
    """`llmkit eval`'s command line, split: the config file and `--key value` overrides for
    EvalArgs, and the command's own options."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)  # --key value pairs, the positional target as --target
    compare: list[str] | None = None
    recipe: str | None = None
    force: bool = False
    help: bool = False


def eval_help() -> str:
    from llmkit.evaluation.runner import EvalArgs

    text = format_help("eval", [EvalArgs], __doc__ or "")
    body = text.split("\n", 1)[1] if text.startswith("usage:") else text
    return f"{USAGE}\n{body}\n{COMMAND_HELP}"


def _value(argv: list[str], i: int, flag: str) -> str:
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise LlmkitError(f"{flag} needs a value")
    return argv[i + 1]


def parse_eval_argv(argv: list[str]) -> EvalCommand:
    """Split the command line. A key of EvalArgs that is true/false takes the next word only
    when it is true/false/yes/no, so `--log_samples runs/x` leaves runs/x as the target."""
    from llmkit.evaluation.runner import EvalArgs

    flags = {n for n, f in EvalArgs.__dataclass_fields__.items() if f.type in ("bool", bool)}
    cmd = EvalCommand()
    targets: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a[2:].split("=", 1)[0].replace("-", "_") if a.startswith("--") else None
        if a in ("-h", "--help"):
            cmd.help = True
        elif a in ("-c", "--config") or name == "config":
            cmd.config = a.split("=", 1)[1] if "=" in a else _value(argv, i, a)
            i += "=" not in a
        elif name == "recipe":
            cmd.recipe = a.split("=", 1)[1] if "=" in a else _value(argv, i, a)
            i += "=" not in a
        elif a == "--force":
            cmd.force = True
        elif a == "--compare":
            cmd.compare = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                cmd.compare.append(argv[i + 1])
                i += 1
            if not cmd.compare:
                raise LlmkitError("--compare needs the results directories to compare")
        elif name is None:
            targets.append(a)
        elif "=" in a:
            cmd.overrides += a.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and (name not in flags or argv[i + 1].lower() in _TRUTH):
            cmd.overrides += [a, argv[i + 1]]
            i += 1
        else:
            cmd.overrides += [a, "true"]  # a bare flag
        i += 1
    if len(targets) > 1:
        raise LlmkitError(f"unexpected argument {targets[1]!r}: llmkit eval takes one run directory or model "
                          "(several results directories go after --compare)")
    if targets:
        cmd.overrides += ["--target", targets[0]]
    return cmd


def eval_command(argv: list[str]) -> int:
    """`llmkit eval ...` -> exit code."""
    from llmkit.evaluation import runner

    cmd = parse_eval_argv(argv)
    if cmd.help:
        print(eval_help())
        return 0
    loaded = runner.load_eval_config(cmd.config, cmd.overrides)
    args = loaded.get(runner.EvalArgs)
    if cmd.compare is not None:
        from llmkit.evaluation import report

        report.compare(([args.target] if args.target else []) + cmd.compare, out_dir=args.output_dir)
        return 0
    if cmd.recipe:
        for key in ("target", "output_dir", "overwrite"):
            if key in loaded.explicit:
                raise LlmkitError(f"llmkit eval --recipe: {key} does not apply (the recipe's eval.yaml names output_dir; "
                                  "--force evaluates finished stages again)")
        runner.eval_recipe(cmd.recipe, loaded.explicit, force=cmd.force)
        return 0
    runner.evaluate(args)
    return 0

