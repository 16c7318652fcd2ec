"""The Spanish documentation stays in step with the English one and names only real things.

- README.es.md holds every fenced code block of README.md, byte for byte, in the same order, and
  no other; both have the same number of `## ` sections.
- docs/es/tutorial.md: every command in its ```bash blocks (lines starting with `make `,
  `llmkit ` or `.venv/bin/`) names a real make target, a real `llmkit` sub-command and recipe
  files that exist; `--key` overrides of a stage command are keys of that stage.
- The keys the tutorial's "Qué probar" lists name in backticks (`key: value`, `--key value` or
  `key`) are keys of the stage the list is about (the list's first line says which:
  **Qué probar** (claves de `sft`)).
- The checks fail on a wrong command, sub-command, recipe file or key (checked on an edited copy).
"""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO

README = REPO / "README.md"
README_ES = REPO / "README.es.md"
TUTORIAL = REPO / "docs" / "es" / "tutorial.md"

FENCE = re.compile(r"^(```[^\n]*\n.*?^```)[ \t]*$", flags=re.M | re.S)
TRY_HEAD = re.compile(r"^\*\*Qué probar\*\* \(claves de `(\w+)`\)", flags=re.M)


def _blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def _read(path):
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- README.es.md


def test_readme_es_has_the_same_code_blocks_in_the_same_order():
    en, es = _blocks(_read(README)), _blocks(_read(README_ES))
    assert en, "README.md has no code blocks?"
    for i, (a, b) in enumerate(zip(en, es)):
        assert a == b, f"code block {i + 1} differs between README.md and README.es.md:\n{a}\n---\n{b}"
    assert len(es) == len(en), f"README.md has {len(en)} code blocks, README.es.md {len(es)}"


def test_readme_es_has_the_same_sections():
    def count(path):
        # headings outside code blocks only
        return len(re.findall(r"^## ", FENCE.sub("", _read(path)), flags=re.M))

    assert count(README_ES) == count(README) > 0


def test_readmes_link_to_each_other():
    assert _read(README).splitlines()[0].strip() == "[Español](README.es.md)"
    assert "(README.md)" in _read(README_ES).splitlines()[0]


# --------------------------------------------------------------------------- the tutorial's commands


def _make_targets() -> set[str]:
    text = _read(REPO / "Makefile")
    return set(re.findall(r"^([a-z][a-z-]*):", text, flags=re.M))


def _subcommands() -> set[str]:
    import argparse

    from llmkit.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


_KEYS: dict[str, set[str]] = {}


def stage_keys(stage: str) -> set[str]:
    """The keys a stage accepts (for `eval`: the keys of a recipe's eval.yaml); one import per
    stage, cached."""
    if stage not in _KEYS:
        if stage == "eval":
            from llmkit.evaluation.runner import RECIPE_EVAL_KEYS  # the keys of a recipe's eval.yaml

            _KEYS[stage] = set(RECIPE_EVAL_KEYS) | {"stages", "output_dir"}
        else:
            from llmkit.config import stage_fields
            from llmkit.stages import stage_module

            _KEYS[stage] = set(stage_fields(stage_module(stage).CLASSES))
    return _KEYS[stage]


def commands(text: str) -> list[str]:
    """Lines of the ```bash blocks that start with make / llmkit / .venv/bin/ (continuations
    joined, comments dropped)."""
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if re.match(r"^(make|llmkit|\.venv/bin/)\S*\s?", line):
                out.append(line)
    return out


def check_command(cmd: str, targets: set[str], subs: set[str]) -> list[str]:
    words = shlex.split(cmd)
    if words[0] == "make":
        problems = _check_make(cmd, words, targets)
    else:
        problems = _check_llmkit(cmd, words, subs)
    return problems + _check_recipe_paths(cmd)


def _check_make(cmd: str, words: list[str], targets: set[str]) -> list[str]:
    assigns = dict(w.split("=", 1) for w in words[1:] if re.match(r"^[A-Z_]+=", w))
    named = [w for w in words[1:] if not re.match(r"^[A-Z_]+=", w)]
    problems = _check_make_targets(cmd, named, targets)
    problems += _check_make_assigns(cmd, assigns)
    if "ARGS" in assigns:
        stage = next((t for t in named if t in ("tokenizer", "pretrain", "sft", "reward")), None)
        if stage:
            problems += _check_overrides(cmd, stage, shlex.split(assigns["ARGS"]))
    return problems


def _check_make_targets(cmd: str, named: list[str], targets: set[str]) -> list[str]:
    problems = []
    if not named:
        problems.append(f"{cmd}: no make target")
    for t in named:
        if t not in targets:
            problems.append(f"{cmd}: make has no target {t!r}")
    return problems


def _check_make_assigns(cmd: str, assigns: dict[str, str]) -> list[str]:
    problems = []
    recipe = assigns.get("RECIPE", "tiny-es")
    if not (REPO / "recipes" / recipe / "pipeline.yaml").is_file():
        problems.append(f"{cmd}: no recipe recipes/{recipe}")
    if "SFT_CONFIG" in assigns and not (REPO / "recipes" / recipe / assigns["SFT_CONFIG"]).is_file():
        problems.append(f"{cmd}: no file recipes/{recipe}/{assigns['SFT_CONFIG']}")
    if "ALGO" in assigns and assigns["ALGO"] not in ("dpo", "grpo", "ppo"):
        problems.append(f"{cmd}: ALGO must be dpo, grpo or ppo")
    if "ACCELERATE" in assigns and not (REPO / "recipes" / "accelerate" / f"{assigns['ACCELERATE']}.yaml").is_file():
        problems.append(f"{cmd}: no recipes/accelerate/{assigns['ACCELERATE']}.yaml")
    return problems


def _llmkit_words(cmd: str, words: list[str]) -> tuple[list[str], list[str]]:
    """(the words of an llmkit command, [] for anything else; problems with the program)."""
    problems = []
    if words[0].startswith(".venv/bin/"):
        tool = words[0].removeprefix(".venv/bin/")
        if not (REPO / ".venv" / "bin" / tool).exists() and tool not in ("llmkit", "python", "jupyter"):
            problems.append(f"{cmd}: no {words[0]}")
        if tool != "llmkit":
            words = []
        else:
            words = ["llmkit", *words[1:]]
    if words and words[0] != "llmkit":
        problems.append(f"{cmd}: not an llmkit command")
        words = []
    return words, problems


def _check_llmkit(cmd: str, words: list[str], subs: set[str]) -> list[str]:
    words, problems = _llmkit_words(cmd, words)
    rest = words[1:]
    while rest and rest[0] == "--verbose":
        rest = rest[1:]
    if words:
        if not rest or rest[0] not in subs:
            problems.append(f"{cmd}: llmkit has no sub-command {rest[0] if rest else ''!r}")
        elif rest[0] in ("tokenizer", "pretrain", "sft", "reward", "dpo", "grpo", "ppo"):
            problems += _check_overrides(cmd, rest[0], rest[1:])
    return problems


def _check_recipe_paths(cmd: str) -> list[str]:
    problems = []
    for w in shlex.split(cmd):
        for path in re.findall(r"(?:^|[=\s])(recipes/[\w./-]+)", " " + w):
            path = path.rstrip("/.,")
            if not (REPO / path).exists():
                problems.append(f"{cmd}: {path} does not exist")
    return problems


def _check_overrides(cmd: str, stage: str, args: list[str]) -> list[str]:
    keys = stage_keys(stage) | {"config", "overwrite", "help"}
    return [f"{cmd}: {stage} has no key {a[2:]!r}" for a in args if a.startswith("--") and a[2:] not in keys]


def try_lists(text: str) -> list[tuple[str, list[str]]]:
    """[(stage, keys named in backticks)] for every "Qué probar" list."""
    out = []
    for m in TRY_HEAD.finditer(text):
        stage = m.group(1)
        body = []
        for line in text[m.end():].splitlines()[1:]:
            if line.startswith("- ") or (body and line.startswith("  ")) or (not body and not line.strip()):
                body.append(line)
            else:
                break
        keys = []
        for span in re.findall(r"`([^`]+)`", "\n".join(body)):
            s = span.strip()
            if re.search(r"\.(ya?ml|png|jsonl?|md|jinja|safetensors|py)$", s):  # a file name, not a key
                continue
            k = re.match(r"^--(\w+)", s) or re.match(r"^([a-z_][a-z0-9_]*)(?:\.[a-z0-9_.]+)?(?::\s.*|:)?$", s)
            if k:
                keys.append(k.group(1))
        out.append((stage, keys))
    return out


def tutorial_problems(text: str) -> list[str]:
    targets, subs = _make_targets(), _subcommands()
    problems = []
    for cmd in commands(text):
        problems += check_command(cmd, targets, subs)
    for stage, keys in try_lists(text):
        if not keys:
            problems.append(f"the 'Qué probar' list of {stage} names no key")
        for k in keys:
            if k not in stage_keys(stage):
                problems.append(f"'Qué probar' ({stage}): {k!r} is not a key of {stage}")
    return problems


def test_tutorial_commands_and_keys_are_real():
    text = _read(TUTORIAL)
    assert len(commands(text)) >= 15, "the tutorial shows fewer commands than expected"
    stages = {s for s, _ in try_lists(text)}
    assert {"tokenizer", "pretrain", "sft", "reward", "dpo", "grpo", "ppo"} <= stages, stages
    assert tutorial_problems(text) == []


@pytest.mark.parametrize(
    "old,new",
    [
        ("make demo    #", "make demos    #"),                              # no such make target
        ("llmkit sft --config recipes/tiny-es/sft.yaml --learning_rate",    # no such sub-command
         "llmkit sfty --config recipes/tiny-es/sft.yaml --learning_rate"),
        ("--config recipes/tiny-es/reward.yaml", "--config recipes/tiny-es/reward_nope.yaml"),  # no such file
        ("make rlhf ALGO=grpo   #", "make rlhf ALGO=grpo RECIPE=no-such   #"),  # no such recipe
        ("make rlhf ALGO=grpo   #", "make rlhf ALGO=sac   #"),                  # no such algorithm
        ("--learning_rate 1e-3 --max_steps", "--learnig_rate 1e-3 --max_steps"),  # override that is no key
        ("`lora_r: 8`", "`lora_rank: 8`"),                                   # 'Qué probar': not a key of sft
        ("`kl_coef: 0.2`", "`kl_coeff: 0.2`"),                               # 'Qué probar': not a key of ppo
    ],
)
def test_the_check_fails_on_an_edited_copy(old, new):
    text = _read(TUTORIAL)
    assert old in text, f"the tutorial no longer contains {old!r}: update this test"
    assert tutorial_problems(text.replace(old, new, 1)) != []


def test_the_check_fails_on_a_changed_code_block():
    en = _read(README)
    es = _read(README_ES)
    changed = es.replace("make demo   #", "make demo  #", 1)
    assert changed != es
    assert _blocks(changed) != _blocks(en)
