"""The report card (`llmkit report`, written by `llmkit run`): built from real run directories,
it holds every stage's key numbers as its manifest records them, its curves and samples, and
the HTML page is self-contained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import llmkit
from test_pipeline import make_recipe

from llmkit.config import LlmkitError


@pytest.fixture(scope="module")
def mini_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    recipe = make_recipe(root)
    assert llmkit("run", recipe) == 0
    return recipe, root / "runs"


def test_run_writes_a_report_with_every_stage_s_numbers(mini_runs):
    from llmkit.report import _fmt, _with_noise

    recipe, runs = mini_runs
    md = (runs / "report.md").read_text(encoding="utf-8")
    for stage in ("tok", "pre", "sft"):
        m = json.loads((runs / stage / "manifest.json").read_text())
        assert m["summary"], f"{stage}: the manifest records no summary"
        for row in m["summary"]:
            before = "–" if row["before"] is None else _with_noise(row["before"], row)
            assert f"| {row['label']} | {before} | {_with_noise(row['after'], row)} |" in md
        assert f"`{runs / stage}`" in md
        assert f"{m['wall_time_s']:.1f} s" in md
    # the pretrain perplexity really is the manifest's
    pre = json.loads((runs / "pre" / "manifest.json").read_text())["metrics"]
    assert f"held-out perplexity {_fmt(pre['eval_ppl_before'])} → {_fmt(pre['eval_ppl'])}" in md
    sft = json.loads((runs / "sft" / "manifest.json").read_text())["metrics"]
    assert f"answers in the trained format {100 * sft['sample_format_match_before']:.1f} % [" in md  # shares in %, with noise
    # the noise comes from the run itself: its sample count, and exact answers compared item by item
    assert sft["sample_count"] > 0 and sft["paired_fixed"] + sft["paired_broken"] <= sft["sample_count"]
    assert f"(n = {sft['sample_count']}; paired: {sft['paired_fixed']} fixed, {sft['paired_broken']} broken" in md
    # sft's greedy answers, before and after
    sample = json.loads((runs / "sft" / "samples.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert sample["generated_before"] is not None
    assert "| prompt | before | after | expected |" in md
    assert "Made on:" in md and "transformers" in md


def test_html_report_is_self_contained_and_shows_the_curves(mini_runs):
    _, runs = mini_runs
    page = (runs / "report.html").read_text(encoding="utf-8")
    pictures = sorted(runs.glob("*/loss.png"))
    assert len(pictures) == 2  # pretrain and sft
    assert page.count("data:image/png;base64,") == len(pictures)
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page), "the page loads something from outside"
    for stage in ("tokenizer", "pretrain", "sft"):  # the recipe's stage names
        assert f"<section id='{stage}'>" in page


def test_report_of_a_runs_directory_and_regeneration(mini_runs, tmp_path):
    from llmkit.report import collect, write_report

    recipe, runs = mini_runs
    by_dir, by_recipe = collect(runs), collect(recipe)
    assert [s["name"] for s in by_dir["stages"]] == ["tok", "pre", "sft"]  # in the order they finished
    assert [s["summary"] for s in by_dir["stages"]] == [s["summary"] for s in by_recipe["stages"]]
    (runs / "report.md").unlink()
    md, page = write_report(runs)
    assert md.is_file() and page.is_file()


def test_runs_that_finished_in_the_same_second_follow_their_inputs(mini_runs, tmp_path):
    """finished_at has one-second resolution: a tiny pretrain can finish in its tokenizer's second."""
    import shutil

    from llmkit.report import find_runs

    _, runs = mini_runs
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    for stage in ("tok", "pre", "sft"):  # all in one second, their inputs pointing into the copy
        f = copy / stage / "manifest.json"
        m = json.loads(f.read_text())
        m["finished_at"] = "2026-01-01T00:00:00+00:00"
        m["upstream"] = {str(copy / Path(u).name): "2026-01-01T00:00:00+00:00" for u in m.get("upstream") or {}}
        f.write_text(json.dumps(m))
    assert json.loads((copy / "pre" / "manifest.json").read_text())["upstream"], "pretrain names its tokenizer run"
    assert [n for n, _ in find_runs(copy)[1]] == ["tok", "pre", "sft"]  # not the directory names' order


def test_report_of_nothing_is_one_clear_error(tmp_path):
    from llmkit.report import write_report

    with pytest.raises(LlmkitError, match="no finished run"):
        write_report(tmp_path)
    with pytest.raises(LlmkitError, match="not a directory"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "report.md").exists()


def test_report_command(mini_runs, capsys):
    _, runs = mini_runs
    (runs / "report.html").unlink()
    assert llmkit("report", runs) == 0
    assert (runs / "report.html").is_file() and str(runs / "report.html") in capsys.readouterr().out
    assert llmkit("report", runs / "nothing") == 2
