"""Eval reports from hand-made results.json files (no model, no harness): number formatting,
the per-run table, compare's deltas and mean row (computed by hand below), settings mismatch,
PNG output, load errors and the published reference scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import LlmkitError
from llmkit.evaluation import report, suite


def task(group, primary, chance, value, stderr=None, n=8, **others):
    metrics = {primary: {"value": value, "stderr": stderr}}
    metrics.update({k: {"value": v, "stderr": None} for k, v in others.items()})
    return {"group": group, "primary": primary, "chance": chance, "n": n, "metrics": metrics}


def results(name, tasks, num_fewshot=0, limit=8, engine="vllm"):
    return {
        "model": {"target": f"runs/tiny-es/{name}", "name": name, "base": None, "adapter": None},
        "engine": {"name": engine, "version": "0.32.0", "settings": {}},
        "settings": {"tasks": list(tasks), "num_fewshot": num_fewshot, "limit": limit, "seed": 1234,
                     "batch_size": 8, "apply_chat_template": False, "system_instruction": None,
                     "max_model_len": None, "data_dir": None},
        "versions": {"llmkit": "0.1.0"},
        "wall_time_s": 12.3,
        "finished_at": "2026-11-23T08:50:00+00:00",
        "tasks": tasks,
        "lm_eval": {"results": {}},
    }


def write(dir_: Path, res: dict) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "results.json").write_text(json.dumps(res), encoding="utf-8")
    return dir_


def row(text: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


# Three runs. A and B share copa, xnli and sts; B alone has belebele; C has no sts.
RUN_A = {"copa_es": task("es_llm", "acc", 0.5, 0.60, 0.17),
         "xnli_es_spanish_bench": task("es_beto", "acc", 1 / 3, 0.40, 0.05),
         "sts_es": task("es_beto", "pearson", 0.0, 0.10, None, spearman=0.12)}
RUN_B = {"copa_es": task("es_llm", "acc", 0.5, 0.70, 0.16),
         "xnli_es_spanish_bench": task("es_beto", "acc", 1 / 3, 0.35, 0.05),
         "sts_es": task("es_beto", "pearson", 0.0, 0.25, "N/A", spearman=0.2),
         "belebele_spa_Latn": task("es_llm", "acc", 0.25, 0.30, 0.05)}
RUN_C = {"copa_es": task("es_llm", "acc", 0.5, 0.55, 0.18),
         "xnli_es_spanish_bench": task("es_beto", "acc", 1 / 3, 0.45, 0.05)}


# ----------------------------------------------------------------------------- formatting


def test_number_formats():
    assert report.fmt_score("acc", 0.625, 0.18) == "62.5 ± 18.0"
    assert report.fmt_score("exact_match", 0.0, 0.0) == "0.0 ± 0.0"
    assert report.fmt_score("pearson", 0.1, 0.05) == "0.100 ± 0.050"
    assert report.fmt_score("mcc", -0.2, None) == "-0.200 ± —"
    for missing in (None, "N/A", float("nan")):
        assert report.fmt_score("f1", 0.5, missing) == "50.0 ± —"
        assert report.fmt_score("f1", missing, 0.1) == "—"
    assert report.fmt_delta("acc", 0.031) == "+3.1"
    assert report.fmt_delta("acc", -0.05) == "-5.0"
    assert report.fmt_delta("acc", -0.0001) == "+0.0"  # no "-0.0"
    assert report.fmt_delta("spearman", 0.15) == "+0.150"
    assert report.fmt_delta("acc", None) == "—"


def test_markdown_table_rows_and_header():
    res = results("sft", {"copa_es": task("es_llm", "acc", 0.5, 0.625, 0.18, n=8, acc_norm=0.5),
                          "sts_es": task("es_beto", "pearson", 0.0, 0.1, None, spearman=0.25),
                          "mgsm_direct_es_spanish_bench": task("es_llm", "exact_match", 0.0, 0.0, 0.0, n=4)})
    text = report.markdown_table(res)
    header = text.splitlines()[0]
    for part in ("**sft**", "vllm 0.32.0", "few-shot 0", "limit 8", "seed 1234", "12.3 s"):
        assert part in header
    assert row(text, "copa_es") == ["copa_es", "es_llm", "acc", "62.5 ± 18.0", "50.0", "8", "acc_norm 50.0 ± —"]
    assert row(text, "sts_es") == ["sts_es", "es_beto", "pearson", "0.100 ± —", "0.000", "8", "spearman 0.250 ± —"]
    assert row(text, "mgsm_direct_es_spanish_bench")[3:6] == ["0.0 ± 0.0", "0.0", "4"]
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + 3  # column names + one row per task


def test_markdown_table_missing_primary_and_defaults():
    res = results("base", {"wnli_es": {"group": "es_llm", "primary": "acc", "chance": 0.5, "n": 0, "metrics": {}}},
                  num_fewshot=None, limit=None)
    text = report.markdown_table(res)
    assert "few-shot task default" in text.splitlines()[0] and "limit none" in text.splitlines()[0]
    assert row(text, "wnli_es")[3] == "—"


# ----------------------------------------------------------------------------- compare


def test_compare_deltas_mean_and_missing(tmp_path, capsys):
    a = write(tmp_path / "eval" / "pretrain", results("pretrain", RUN_A))
    b = write(tmp_path / "eval" / "sft", results("sft", RUN_B))
    c = write(tmp_path / "eval" / "dpo", results("dpo", RUN_C))
    text = report.compare([a, b, c], out_dir=tmp_path / "cmp")
    head = row(text, "task")
    assert head == ["task", "metric", "chance", "pretrain", "sft", "dpo", "Δ sft", "Δ dpo"]
    # hand-computed: sft - pretrain and dpo - pretrain, in points (correlation units for pearson)
    assert row(text, "copa_es") == ["copa_es", "acc", "50.0", "60.0 ± 17.0", "70.0 ± 16.0", "55.0 ± 18.0", "+10.0", "-5.0"]
    assert row(text, "xnli_es_spanish_bench")[2:] == ["33.3", "40.0 ± 5.0", "35.0 ± 5.0", "45.0 ± 5.0", "-5.0", "+5.0"]
    assert row(text, "sts_es")[2:] == ["0.000", "0.100 ± —", "0.250 ± —", "—", "+0.150", "—"]
    assert row(text, "belebele_spa_Latn")[2:] == ["25.0", "—", "30.0 ± 5.0", "—", "—", "—"]
    # mean over the tasks all three share (copa, xnli): pretrain 50.0, sft 52.5, dpo 50.0;
    # chance (50 + 33.3) / 2 = 41.7
    mean = next(line for line in text.splitlines() if line.startswith("| **mean**"))
    cells = [c.strip() for c in mean.strip("|").split("|")]
    assert cells[0] == "**mean** accuracy-type (2 shared tasks, %)"
    assert cells[2:] == ["41.7", "50.0", "52.5", "50.0", "+2.5", "+0.0"]
    assert "Warning" not in text
    assert (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8") == text
    png = tmp_path / "cmp" / "compare.png"
    assert png.read_bytes()[:8] == report.PNG_MAGIC and png.stat().st_size > 1000
    err = capsys.readouterr().err
    assert "copa_es" in err and "sft" in err


def test_compare_disambiguates_equal_names(tmp_path):
    a = write(tmp_path / "a" / "eval", results("sft", RUN_A))
    b = write(tmp_path / "b" / "eval", results("sft", RUN_C))
    text = report.compare([a, b / "results.json"], echo=False)
    assert row(text, "task")[3:] == ["sft (a/eval)", "sft (b/eval)", "Δ sft (b/eval)"]


def test_compare_mismatch(tmp_path):
    a = write(tmp_path / "zero", results("base", RUN_A, num_fewshot=0))
    b = write(tmp_path / "five", results("sft", RUN_B, num_fewshot=5))
    with pytest.raises(LlmkitError, match="num_fewshot") as info:
        report.compare([a, b], echo=False)
    assert "limit" not in str(info.value)  # only the setting that differs is named
    c = write(tmp_path / "lim", results("dpo", RUN_C, limit=None))
    with pytest.raises(LlmkitError, match="limit"):
        report.compare([a, c], echo=False)
    text = report.compare([a, b], echo=False, allow_mismatch=True)
    assert "> **Warning:**" in text and "num_fewshot: base=0, sft=5" in text
    assert row(text, "copa_es")[-1] == "+10.0"


def test_compare_needs_two_runs(tmp_path):
    a = write(tmp_path / "a", results("base", RUN_A))
    with pytest.raises(LlmkitError, match="at least two"):
        report.compare([a])
    with pytest.raises(LlmkitError, match="does not exist"):
        report.compare([a, tmp_path / "nowhere"], echo=False)


# ----------------------------------------------------------------------------- files


def test_write_report_files(tmp_path):
    res = results("sft", {**RUN_A, "escola": task("es_llm", "mcc", 0.0, -0.1, 0.05, acc=0.48)})
    md, png = report.write_report(res, tmp_path / "out")
    assert md == tmp_path / "out" / "report.md" and png == tmp_path / "out" / "results.png"
    data = png.read_bytes()
    assert data[:8] == report.PNG_MAGIC and len(data) > 1000
    text = md.read_text(encoding="utf-8")
    assert report.markdown_table(res) in text
    # published scores for the run's tasks only: XNLI and STS here, not MLDoc or SQAC
    assert "Published scores" in text and "MarIA RoBERTa-large" in text
    assert "| mldoc_es |" not in text and "| sqac_es |" not in text


def test_load_results_errors(tmp_path):
    with pytest.raises(LlmkitError, match="does not exist"):
        report.load_results(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LlmkitError, match="has no results.json"):
        report.load_results(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text('{"model": {', encoding="utf-8")
    with pytest.raises(LlmkitError, match="not valid JSON"):
        report.load_results(bad)
    (bad / "results.json").write_text('{"results": {"copa_es": {"acc,none": 0.5}}}', encoding="utf-8")  # raw lm-eval
    with pytest.raises(LlmkitError, match="not an llmkit results file"):
        report.load_results(bad)
    (bad / "results.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(LlmkitError, match="not an llmkit results file"):
        report.load_results(bad / "results.json")
    (bad / "results.json").write_text('{"model": {}, "tasks": {"copa_es": {"acc": 0.5}}}', encoding="utf-8")
    with pytest.raises(LlmkitError, match="copa_es"):
        report.load_results(bad)
    good = write(tmp_path / "good", results("sft", RUN_A))
    assert report.load_results(good) == report.load_results(good / "results.json")


# ----------------------------------------------------------------------------- published scores


def test_reference_rows():
    rows = report.reference_rows()
    assert rows, "reference.yaml has no scores"
    for r in rows:
        assert r["task"] in suite.TASKS, r
        assert r["setting"] == "fine-tuned" or r["setting"].endswith("-shot"), r
        assert r["source"] and "http" in r["source"], r  # every score names a URL to check it
    xnli = report.reference_rows("xnli_es_spanish_bench")
    assert xnli and all(r["task"] == "xnli_es_spanish_bench" for r in xnli)
    assert report.reference_rows("no_such_task") == []
    # spot-check one number against its source (BETO README: XNLI, BETO-cased 82.01)
    assert any(r["model"] == "BETO cased" and r["value"] == pytest.approx(0.8201) for r in xnli)
    table = report.reference_markdown()
    assert "| xnli_es_spanish_bench | BETO cased | acc | 82.01 |" in table
    assert "| sts_es | MarIA RoBERTa-base | combined | 0.8533 |" in table


def test_reference_rows_rejects_bad_entries(tmp_path):
    f = tmp_path / "ref.yaml"
    f.write_text("sources: {s: paper}\nscores:\n  - {model: m, task: copa_es, metric: acc, value: 84.4, "
                 "setting: 3-shot, source: s}\n", encoding="utf-8")
    with pytest.raises(LlmkitError, match="fraction"):
        report.reference_rows(path=f)
    f.write_text("sources: {s: paper}\nscores:\n  - {model: m, task: copa_es, value: 0.8, setting: 3-shot, "
                 "source: t}\n", encoding="utf-8")
    with pytest.raises(LlmkitError, match="metric"):
        report.reference_rows(path=f)


# ----------------------------------------------------------------------------- data source, scales, chart layout


def test_report_says_when_the_data_is_a_local_fixture(tmp_path):
    tasks = {"copa_es": task("es_llm", "acc", 0.5, 0.625, 0.18, n=8),
             "xnli_es_spanish_bench": task("es_beto", "acc", 1 / 3, 0.5, 0.2, n=6),
             "sts_es": task("es_beto", "pearson", 0.0, 0.1, None, n=7)}
    fixture = results("sft", tasks, limit=None)
    fixture["settings"]["data_dir"] = "tests/fixtures/eval"
    header = report.markdown_table(fixture).splitlines()[0]
    assert "full test sets" not in header
    assert "data: test fixture `tests/fixtures/eval`" in header and "n 6–8 per task" in header
    md, _ = report.write_report(fixture, tmp_path / "fixture")
    text = md.read_text(encoding="utf-8")
    assert "> **Data:** test fixture `tests/fixtures/eval`, not the published test sets (n 6–8 per task)" in text
    # the published scores of other models: after the run's table, in their own titled block
    block = text.index("## Published scores of other models (not comparable with fixture runs)")
    assert text.index("| copa_es |") < text.index("\n---\n") < block < text.index("MarIA RoBERTa-large")
    assert "MarIA" not in text[:block]
    local = results("sft", tasks, limit=None)
    local["settings"]["data_dir"] = "/data/es_copies"
    assert "data: local copy (--data_dir) `/data/es_copies`" in report.markdown_table(local).splitlines()[0]
    published = report.markdown_table(results("sft", tasks, limit=None)).splitlines()[0]
    assert "limit none (full test sets)" in published and "data:" not in published


def test_compare_never_averages_correlations_with_accuracies(tmp_path):
    a = {"copa_es": task("es_llm", "acc", 0.5, 0.60, 0.1), "xnli_es_spanish_bench": task("es_beto", "acc", 1 / 3, 0.40, 0.1),
         "sts_es": task("es_beto", "pearson", 0.0, 0.10), "escola": task("es_llm", "mcc", 0.0, -0.20)}
    b = {"copa_es": task("es_llm", "acc", 0.5, 0.70, 0.1), "xnli_es_spanish_bench": task("es_beto", "acc", 1 / 3, 0.50, 0.1),
         "sts_es": task("es_beto", "pearson", 0.0, 0.30), "escola": task("es_llm", "mcc", 0.0, 0.00)}
    text = report.compare([write(tmp_path / "a", results("base", a)), write(tmp_path / "b", results("sft", b))], echo=False)
    # by hand: accuracies (60 + 40) / 2 = 50.0 and (70 + 50) / 2 = 60.0, chance (50 + 33.3) / 2 = 41.7;
    # correlations (0.10 - 0.20) / 2 = -0.050 and (0.30 + 0.00) / 2 = 0.150, chance 0
    assert row(text, "**mean** accuracy-type (2 shared tasks, %)")[2:] == ["41.7", "50.0", "60.0", "+10.0"]
    assert row(text, "**mean** correlation/MCC (2 shared tasks, r)")[2:] == ["0.000", "-0.050", "0.150", "+0.200"]
    # (the former single mean took every task ×100: (60 + 40 + 10 - 20) / 4 = 22.5)
    assert "22.5" not in text


@pytest.mark.parametrize("which", ["one", "compare"])
def test_charts_keep_the_x_label_and_put_the_legend_outside_the_axes(tmp_path, monkeypatch, which):
    import matplotlib.image
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure that was saved
    long_names = {**RUN_B, "mgsm_direct_es_spanish_bench": task("es_llm", "exact_match", 0.0, 0.0, 0.0),
                  "escola": task("es_llm", "mcc", 0.0, -0.1, 0.05)}
    if which == "one":
        png = report.bar_chart(results("sft", long_names), tmp_path / "results.png")
    else:
        png = report.compare_chart([results("a", RUN_A), results("b", long_names)], ["a", "b"], tmp_path / "compare.png")
    fig = figures[-1]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1  # right of the axes: it covers no bar
    # the saved image holds everything: the x label, the task names and the legend
    tight = fig.get_tightbbox(renderer)  # inches
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width >= tight.width * fig.dpi - 2 and height >= tight.height * fig.dpi - 2
    for artist in (ax.xaxis.label, legend, *ax.get_yticklabels()):
        box = artist if hasattr(artist, "x0") else artist.get_window_extent(renderer)
        assert tight.x0 * fig.dpi - 1 <= box.x0 and box.x1 <= tight.x1 * fig.dpi + 1
        assert tight.y0 * fig.dpi - 1 <= box.y0 and box.y1 <= tight.y1 * fig.dpi + 1


def test_bleu_like_metrics_keep_their_0_100_scale_and_their_own_mean():
    """BLEU 25.3 (the harness's scale) is shown and charted as 25.3, not 2530, and never
    averaged with accuracies; ROUGE-1 (0-1) is a percentage."""
    from llmkit.evaluation import report

    assert report.fmt_value("bleu", 25.3) == "25.3" and report.fmt_value("rouge1", 0.253) == "25.3"
    assert report._scaled(25.3, "bleu") == 25.3 and report._scaled(0.5, "acc") == 50.0
    assert report.fmt_delta("bleu", 2.0) == "+2.0"
    rows = [{"task": "a", "metric": "acc", "chance": 0.5, "cells": [(0.6, None), (0.7, None)]},
            {"task": "b", "metric": "bleu", "chance": 0.0, "cells": [(20.0, None), (30.0, None)]},
            {"task": "c", "metric": "pearson", "chance": 0.0, "cells": [(0.1, None), (0.3, None)]}]
    means = {m["scale"]: m["means"] for m in report._mean_rows(rows, 2)}
    assert means == {"%": [0.6, 0.7], "points": [20.0, 30.0], "r": [0.1, 0.3]}
