"""Reports of `llmkit eval` results: one run as a table and a bar chart, several runs side by side.

Input is the ``results.json`` that ``llmkit eval`` writes (see ``runner.py``); nothing here
runs a model.  What each function writes:

    write_report(results, dir)   report.md (markdown_table + published reference scores for the
                                 same tasks) and results.png (bar_chart)
    compare(paths, out_dir)      compare.md and compare.png; the same table on the console (stderr)

How numbers are shown (results.json keeps the harness's raw fractions):

- accuracy-like metrics (acc, acc_norm, f1, exact_match, em, precision, recall) in percent with
  one decimal: ``0.625 ± 0.18`` is ``62.5 ± 18.0``;
- correlations and MCC (pearson, spearman, mcc) as plain numbers with three decimals;
- BLEU, chrF, TER and EQ-Bench, which the harness reports on 0-100 already, as they are (one decimal);
- a missing value or standard error (null, "N/A", NaN) as "—".

In `compare`, a delta is the run's primary metric minus the first run's, on that display scale
(percentage points, or correlation units), signed.  The mean rows average the tasks that every
run has, one mean per scale (accuracy-type metrics in %, BLEU-like points, correlations and MCC in their own
units: a Pearson r is never averaged with an accuracy), so runs are compared on the same tasks
only.  The charts draw every task on one 0-100 axis (a correlation of 0.25 at 25, BLEU as it is), labelled so.

A run that read local data (``settings.data_dir``: a test fixture or --data_dir copy) says so
in its header, with the number of examples per task; published scores of other models are in
a separate block that says they are not comparable with such a run.

Published scores (``reference.yaml``, see `reference_rows`) are context, not targets: most come
from fine-tuned encoders, a different protocol from few-shot prompting (docs/evaluation.md).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

RESULTS_FILE = "results.json"
REFERENCE_FILE = Path(__file__).resolve().parent / "reference.yaml"
PERCENT_METRICS = frozenset({"acc", "acc_norm", "f1", "exact_match", "em", "precision", "recall", "rouge1", "rouge2", "rougeL"})
# metrics the harness already reports on a 0-100 scale (translation, EQ-Bench): shown and charted as they are
POINTS_METRICS = frozenset({"bleu", "ter", "chrf", "eqbench", "percent_parseable"})
MUST_MATCH = ("num_fewshot", "limit")  # settings that make two runs' scores incomparable
MISSING = "—"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHANCE_COLOR = "crimson"


# ----------------------------------------------------------------------------- loading


def _results_file(path: str | Path) -> Path:
    p = Path(path)
    return p / RESULTS_FILE if p.is_dir() else p


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results directory (or its results.json); LlmkitError naming the file otherwise."""
    f = _results_file(path)
    if not f.is_file():
        where = f"{path} has no {RESULTS_FILE}" if Path(path).is_dir() else f"{f} does not exist"
        raise LlmkitError(f"{where}: give the output directory of `llmkit eval` (or its {RESULTS_FILE})")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmkitError(f"{f}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise LlmkitError(f"{f}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise LlmkitError(f"{f}: not an llmkit results file (a JSON {type(data).__name__}, expected an object)")
    missing = [k for k in ("model", "tasks") if not isinstance(data.get(k), dict)]
    if missing:
        raise LlmkitError(f"{f}: not an llmkit results file (no {' / '.join(missing)} object; written by `llmkit eval`?)")
    for name, task in data["tasks"].items():
        if not isinstance(task, dict) or not isinstance(task.get("metrics"), dict):
            raise LlmkitError(f"{f}: task {name!r} has no metrics object; not an llmkit results file")
    return data


# ----------------------------------------------------------------------------- formatting


def _num(x: Any) -> float | None:
    """A finite number, else None (null, "N/A", NaN, booleans)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _is_percent(metric: str | None) -> bool:
    return metric in PERCENT_METRICS


def _is_points(metric: str | None) -> bool:
    return metric in POINTS_METRICS


def _scale(metric: str | None) -> str:
    """"%" (0-1 shown ×100), "points" (already 0-100) or "r" (correlations, MCC: their own units)."""
    return "%" if _is_percent(metric) else "points" if _is_points(metric) else "r"


def fmt_value(metric: str | None, value: Any) -> str:
    """``acc 0.625`` -> ``62.5``; ``pearson 0.1`` -> ``0.100``; missing -> "—"."""
    v = _num(value)
    if v is None:
        return MISSING
    return f"{100 * v:.1f}" if _is_percent(metric) else f"{v:.1f}" if _is_points(metric) else f"{v:.3f}"


def fmt_score(metric: str | None, value: Any, stderr: Any = None) -> str:
    """``62.5 ± 18.0``; the standard error shows "—" when the harness gave none."""
    if _num(value) is None:
        return MISSING
    return f"{fmt_value(metric, value)} ± {fmt_value(metric, stderr)}"


def fmt_delta(metric: str | None, delta: float | None) -> str:
    """Signed difference on the display scale: ``+3.1`` (points) or ``-0.050``."""
    if delta is None:
        return MISSING
    d, digits = (100 * delta, 1) if _is_percent(metric) else (delta, 1) if _is_points(metric) else (delta, 3)
    d = round(d, digits) or 0.0  # no "-0.0"
    return f"{d:+.{digits}f}"


def _primary(task: dict[str, Any]) -> tuple[str | None, float | None, Any]:
    metric = task.get("primary")
    m = task.get("metrics", {}).get(metric) or {}
    return metric, _num(m.get("value")), m.get("stderr")


def _setting(results: dict[str, Any], key: str) -> Any:
    return (results.get("settings") or {}).get(key)


def _engine(results: dict[str, Any]) -> str:
    e = results.get("engine") or {}
    return " ".join(str(x) for x in (e.get("name"), e.get("version")) if x) or "unknown engine"


def _name(results: dict[str, Any]) -> str:
    m = results.get("model") or {}
    return str(m.get("name") or m.get("target") or "model")


def data_source(results: dict[str, Any]) -> str | None:
    """None when the tasks read their published data; else what the local copy is (the
    ``data_dir`` results.json records: --data_dir or $LLMKIT_EVAL_DATA_DIR)."""
    data_dir = _setting(results, "data_dir")
    if not data_dir:
        return None
    fixture = "fixtures" in Path(str(data_dir)).parts
    return f"{'test fixture' if fixture else 'local copy (--data_dir)'} `{data_dir}`"


def _n_range(results: dict[str, Any]) -> str | None:
    ns = [t.get("n") for t in results["tasks"].values() if isinstance(t.get("n"), int) and not isinstance(t.get("n"), bool)]
    if not ns:
        return None
    lo, hi = min(ns), max(ns)
    return f"n {lo} per task" if lo == hi else f"n {lo}–{hi} per task"


def header_line(results: dict[str, Any]) -> str:
    fewshot = _setting(results, "num_fewshot")
    limit = _setting(results, "limit")
    wall = _num(results.get("wall_time_s"))
    local = data_source(results)
    everything = "every example of the local data" if local else "full test sets"
    parts = [
        f"**{_name(results)}**",
        f"engine {_engine(results)}",
        f"few-shot {'task default' if fewshot is None else fewshot}",
        *([f"data: {local}"] if local else []),
        f"limit {f'none ({everything})' if limit is None else limit}",
        *([n] if (n := _n_range(results)) else []),
        f"seed {_setting(results, 'seed') if _setting(results, 'seed') is not None else MISSING}",
        f"wall time {MISSING if wall is None else f'{wall:.1f} s'}",
    ]
    if _setting(results, "apply_chat_template"):
        parts.append("chat template")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- one run


def markdown_table(results: dict[str, Any]) -> str:
    """One row per task: primary metric ± stderr, chance level, n, then the task's other metrics."""
    lines = [header_line(results), ""]
    if data_source(results):
        lines += [f"> **Data:** {data_source(results)}, not the published test sets ({_n_range(results) or 'n unknown'}): "
                  "these scores say whether the pipeline works, not how good the model is, and are not comparable with "
                  "published scores.", ""]
    lines += ["| task | group | metric | score ± stderr | chance | n | other metrics |",
             "|---|---|---|---|---|---|---|"]
    for name, task in results["tasks"].items():
        metric, value, stderr = _primary(task)
        others = ", ".join(f"{k} {fmt_score(k, m.get('value'), m.get('stderr'))}"
                           for k, m in task["metrics"].items() if k != metric and isinstance(m, dict))
        lines.append(f"| {name} | {task.get('group') or MISSING} | {metric or MISSING} | "
                     f"{fmt_score(metric, value, stderr)} | {fmt_value(metric, task.get('chance'))} | "
                     f"{task.get('n', MISSING)} | {others or MISSING} |")
    return "\n".join(lines)


def _scaled(value: float | None, metric: str | None = None) -> float | None:
    """A value on the charts' 0-100 axis (×100, except metrics already on it: BLEU, chrF, EQ-Bench)."""
    return None if value is None else (value if _is_points(metric) else 100 * value)


def _err(stderr: Any, metric: str | None = None) -> float:
    """Error-bar length on the same axis; NaN (no bar drawn) when the harness gave no standard error."""
    v = _num(stderr)
    return math.nan if v is None else _scaled(v, metric)


def _axis_label() -> str:
    return "score on a 0-100 axis\n(accuracy, F1, exact match, ROUGE in %; BLEU, chrF, EQ-Bench as reported; correlations and MCC ×100)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _xlim(values: list[float]) -> tuple[float, float]:
    lo = min([0.0, *values])
    return (lo - 5 if lo < 0 else 0.0), max(100.0, *values) + 2


def bar_chart(results: dict[str, Any], png_path: str | Path) -> Path:
    """Horizontal bars of each task's primary metric (×100), error bars from the standard error,
    a black tick at the task's chance level."""
    plt = _plt()
    tasks = list(results["tasks"].items())
    labels, values, errors, chances = [], [], [], []
    for name, task in tasks:
        metric, value, stderr = _primary(task)
        labels.append(f"{name} ({metric})")
        values.append(_scaled(value, metric) or 0.0)
        errors.append(_err(stderr, metric))
        chances.append(_scaled(_num(task.get("chance")), metric))
    y = list(range(len(tasks)))
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.45 * max(1, len(tasks))), dpi=100)
    ax.barh(y, values, xerr=errors, color="tab:blue", alpha=0.8, capsize=3, label="primary metric ± stderr")
    cy = [i for i, c in zip(y, chances) if c is not None]
    ax.scatter([c for c in chances if c is not None], cy, marker="|", s=300, color=CHANCE_COLOR, zorder=3, label="chance")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ends = [v + s * e for v, e in zip(values, errors) if not math.isnan(e) for s in (-1, 1)]
    ax.set_xlim(*_xlim(values + ends + [c for c in chances if c is not None]))
    ax.set_xlabel(_axis_label())
    ax.set_title(f"{_name(results)} — {_engine(results)}")
    return _save_chart(fig, ax, png_path)


def _save_chart(fig, ax, png_path) -> Path:
    """The finishing touches both charts share: zero line, grid, the legend outside the axes
    (right of them, so it never covers a bar); saved with a tight bounding box so that nothing
    (the two-line x label, long task names, the legend) is cut off; closed."""
    plt = _plt()

    ax.axvline(0, color="grey", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, markerscale=0.5)
    fig.tight_layout()
    fig.savefig(png_path, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return Path(png_path)


def write_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """report.md and results.png in out_dir; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = f"# Evaluation: {_name(results)}\n\n{markdown_table(results)}\n"
    refs = reference_markdown(list(results["tasks"]))
    if refs:
        why = (f"this run read {data_source(results)}, not the published test sets"
               if data_source(results) else "most are fine-tuned encoders, a different protocol from few-shot prompting")
        text += ("\n---\n\n## Published scores of other models (not comparable with fixture runs)\n\n"
                 f"Other models, other protocols: context, not a target, and not this run's scores ({why}); "
                 "see docs/evaluation.md.\n\n" + refs + "\n")
    md = out / "report.md"
    md.write_text(text, encoding="utf-8")
    return md, bar_chart(results, out / "results.png")


# ----------------------------------------------------------------------------- several runs


def _labels(names: list[str], files: list[Path]) -> list[str]:
    """Model names, made unique by the shortest trailing part of the results directory that tells
    equal names apart (``sft (a/eval)`` vs ``sft (b/eval)``), else by position."""
    labels = list(names)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        if len(idx) < 2:
            continue
        dirs = [files[i].resolve().parent.parts for i in idx]
        for depth in range(1, max(len(d) for d in dirs) + 1):
            tails = ["/".join(d[-depth:]) for d in dirs]
            if len(set(tails)) == len(tails):
                break
        else:
            tails = [f"#{i + 1}" for i in idx]
        for i, tail in zip(idx, tails):
            labels[i] = f"{name} ({tail})"
    return labels


def _mismatches(runs: list[dict[str, Any]], labels: list[str]) -> list[str]:
    out = []
    for key in MUST_MATCH:
        values = [_setting(r, key) for r in runs]
        if len(set(map(repr, values))) > 1:
            out.append(f"{key}: " + ", ".join(f"{lab}={v}" for lab, v in zip(labels, values)))
    return out


def _task_meta(runs: list[dict[str, Any]], task: str) -> dict[str, Any]:
    return next(r["tasks"][task] for r in runs if task in r["tasks"])


def compare_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Tasks in order of first appearance, and per task: metric, chance and each run's
    (value, stderr) of the primary metric (None where the run lacks the task)."""
    tasks = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    rows = []
    for t in tasks:
        meta = _task_meta(runs, t)
        metric = meta.get("primary")
        cells = []
        for r in runs:
            m = (r["tasks"].get(t) or {}).get("metrics", {}).get(metric) or {}
            cells.append((_num(m.get("value")), m.get("stderr")) if t in r["tasks"] else (None, None))
        rows.append({"task": t, "metric": metric, "chance": _num(meta.get("chance")), "cells": cells})
    return tasks, rows


def _mean_rows(rows: list[dict[str, Any]], n_runs: int) -> list[dict[str, Any]]:
    """One mean per metric scale over the tasks every run has: accuracy-type metrics (in %) and
    correlations/MCC (in [-1, 1]) are never averaged together."""
    out = []
    for scale, metric in (("%", "acc"), ("points", "bleu"), ("r", "pearson")):
        shared = [r for r in rows if all(v is not None for v, _ in r["cells"]) and _scale(r["metric"]) == scale]
        if not shared:
            continue
        means = [sum(r["cells"][i][0] for r in shared) / len(shared) for i in range(n_runs)]
        chances = [r["chance"] for r in shared]
        chance = sum(chances) / len(chances) if all(c is not None for c in chances) else None
        out.append({"n": len(shared), "means": means, "chance": chance, "scale": scale, "metric": metric})
    return out


def _mean_label(mean: dict[str, Any], bold: bool = True) -> str:
    kind = {"%": "accuracy-type", "points": "BLEU/chrF/EQ-Bench", "r": "correlation/MCC"}[mean["scale"]]
    tasks = f"{mean['n']} shared task{'s' if mean['n'] != 1 else ''}"
    name = "**mean**" if bold else "mean"
    return f"{name} {kind} ({tasks}, {mean['scale']})"


def _deltas(row: dict[str, Any]) -> list[str]:
    """Each later run minus the first on one task ("—" where either lacks it)."""
    base = row["cells"][0][0]
    return [fmt_delta(row["metric"], v - base) if v is not None and base is not None else MISSING
            for v, _ in row["cells"][1:]]


def _mean_cells(mean: dict[str, Any]) -> list[str]:
    """chance, each run's mean and each delta, on the scale of the metrics averaged."""
    m, means = mean["metric"], mean["means"]
    return [fmt_value(m, mean["chance"]), *(fmt_value(m, v) for v in means), *(fmt_delta(m, v - means[0]) for v in means[1:])]


def compare_markdown(runs: list[dict[str, Any]], labels: list[str], files: list[Path],
                     warnings: Sequence[str] = ()) -> str:
    _, rows = compare_rows(runs)
    head = ["task", "metric", "chance", *labels, *(f"Δ {lab}" for lab in labels[1:])]
    lines = ["# Comparison", ""]
    lines += [f"{i + 1}. {lab}: `{f}` · {header_line(r)}" for i, (lab, f, r) in enumerate(zip(labels, files, runs))]
    lines += [""] + [f"> **Warning:** settings differ, scores are not comparable: {w}" for w in warnings]
    lines += [""] * bool(warnings) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m = row["metric"]
        lines.append("| " + " | ".join([row["task"], m or MISSING, fmt_value(m, row["chance"]),
                                        *(fmt_score(m, v, e) for v, e in row["cells"]), *_deltas(row)]) + " |")
    for mean in _mean_rows(rows, len(runs)):
        chance, *rest = _mean_cells(mean)
        lines.append("| " + " | ".join([_mean_label(mean), "", chance, *rest]) + " |")
    lines += ["", "Δ: the run minus the first run, in percentage points (correlation units for pearson, spearman, mcc). "
              "Scores are ± standard error; a delta smaller than about two standard errors is noise. "
              "Means are over the tasks every run has, one per scale: accuracy-type metrics (acc, F1, exact match, ROUGE) "
              "in %, BLEU/chrF/EQ-Bench in their own 0-100 points, correlations and MCC in their own units; "
              "scales are never averaged together."]
    return "\n".join(lines) + "\n"


def compare_chart(runs: list[dict[str, Any]], labels: list[str], png_path: str | Path) -> Path:
    """Grouped horizontal bars: one group per task, one bar per run (×100 axis), chance ticks."""
    plt = _plt()
    _, rows = compare_rows(runs)
    k = len(runs)
    h = 0.8 / k
    fig, ax = plt.subplots(figsize=(10, 1.9 + 0.3 * k * max(1, len(rows))), dpi=100)
    seen: list[float] = []
    for j, lab in enumerate(labels):
        ys, xs, errs = [], [], []
        for i, row in enumerate(rows):
            v, e = row["cells"][j]
            if v is not None:
                ys.append(i - 0.4 + h * (j + 0.5))
                xs.append(_scaled(v, row["metric"]))
                errs.append(_err(e, row["metric"]))
        seen += xs + [x + s * e for x, e in zip(xs, errs) if not math.isnan(e) for s in (-1, 1)]
        ax.barh(ys, xs, height=h, xerr=errs, capsize=2, label=lab, alpha=0.85)
    chance = [(i, _scaled(r["chance"], r["metric"])) for i, r in enumerate(rows) if r["chance"] is not None]
    if chance:
        ax.scatter([c for _, c in chance], [i for i, _ in chance], marker="|", s=600, color=CHANCE_COLOR, zorder=3,
                   label="chance")
    ax.set_yticks(range(len(rows)), [f"{r['task']} ({r['metric']})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(*_xlim(seen + [c for _, c in chance]))
    ax.set_xlabel(_axis_label())
    engines = sorted({_engine(r) for r in runs})
    ax.set_title(f"{' vs '.join(labels)} — {', '.join(engines)}", fontsize=10)
    return _save_chart(fig, ax, png_path)


def _print_rich(runs: list[dict[str, Any]], labels: list[str], warnings: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    _, rows = compare_rows(runs)
    table = Table(title="llmkit eval --compare", caption="scores ± standard error: compare.md / compare.png")
    for col in ["task", "metric", "chance", *labels, *(f"Δ {lab}" for lab in labels[1:])]:
        table.add_column(col, justify="left" if col in ("task", "metric") else "right", no_wrap=True)
    for row in rows:
        m = row["metric"]
        table.add_row(row["task"], m or MISSING, fmt_value(m, row["chance"]),
                      *(fmt_value(m, v) for v, _ in row["cells"]), *_deltas(row))
    for mean in _mean_rows(rows, len(runs)):
        chance, *rest = _mean_cells(mean)
        table.add_row(_mean_label(mean, bold=False), "", chance, *rest, style="bold")
    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: print the whole table rather than truncate numbers to 80 columns
        console = Console(stderr=True, width=1000)  # the table itself stays as narrow as its cells
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] settings differ: {w}")
    console.print(table)


def compare(paths: Sequence[str | Path], out_dir: str | Path | None = None, allow_mismatch: bool = False,
            echo: bool = True) -> str:
    """Compare several evaluations task by task; returns the Markdown (compare.md).

    Runs must share num_fewshot and limit (LlmkitError naming the setting otherwise) unless
    ``allow_mismatch``, which keeps going and puts a warning line in the Markdown.  With
    ``out_dir``, writes compare.md and compare.png there; with ``echo``, prints a table to stderr.
    """
    if len(paths) < 2:
        raise LlmkitError(f"compare needs at least two results directories, got {len(paths)}")
    files = [_results_file(p) for p in paths]
    runs = [load_results(p) for p in paths]
    labels = _labels([_name(r) for r in runs], files)
    warnings = _mismatches(runs, labels)
    if warnings and not allow_mismatch:
        raise LlmkitError("runs used different settings, their scores are not comparable: " + "; ".join(warnings)
                          + " (evaluate them again with the same settings, or allow_mismatch=True to compare anyway)")
    text = compare_markdown(runs, labels, files, warnings)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text, encoding="utf-8")
        compare_chart(runs, labels, out / "compare.png")
    if echo:
        _print_rich(runs, labels, warnings)
        if out_dir is not None:
            print(f"llmkit: comparison in {out_dir}/ (compare.md, compare.png)", file=sys.stderr)
    return text


# ----------------------------------------------------------------------------- published scores

_REFERENCE_KEYS = ("model", "task", "metric", "value", "setting", "source")


def reference_rows(task: str | None = None, path: str | Path = REFERENCE_FILE) -> list[dict[str, Any]]:
    """Published scores from reference.yaml (all, or one task's), each with its full source text."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LlmkitError(f"{path}: cannot read the reference scores ({exc})") from None
    sources = data.get("sources") or {}
    rows = []
    for i, row in enumerate(data.get("scores") or []):
        missing = [k for k in _REFERENCE_KEYS if row.get(k) in (None, "")]
        if missing:
            raise LlmkitError(f"{path}: scores[{i}] lacks {', '.join(missing)}")
        if row["source"] not in sources:
            raise LlmkitError(f"{path}: scores[{i}] names source {row['source']!r}, not under sources:")
        v = _num(row["value"])
        if v is None or not -1 <= v <= 1:
            raise LlmkitError(f"{path}: scores[{i}] value {row['value']!r} is not a fraction in [-1, 1]")
        if task is None or row["task"] == task:
            rows.append({**row, "source_key": row["source"], "source": sources[row["source"]]})
    return rows


def _fmt_published(metric: str, value: float) -> str:
    """A published score at the precision it was published: 0.8905 -> 89.05, 0.844 -> 84.4."""
    return f"{round(100 * value, 2):g}" if _is_percent(metric) else f"{round(value, 4):g}"


def reference_markdown(tasks: Sequence[str] | None = None, path: str | Path = REFERENCE_FILE) -> str:
    """The published scores as a Markdown table (only ``tasks`` when given; "" when none)."""
    from llmkit.evaluation.suite import TASKS

    order = list(tasks) if tasks is not None else list(TASKS)
    rows = [r for r in reference_rows(path=path) if tasks is None or r["task"] in tasks]
    rows.sort(key=lambda r: order.index(r["task"]) if r["task"] in order else len(order))
    if not rows:
        return ""
    sources = {r["source_key"]: " ".join(str(r["source"]).split()) for r in rows}
    keys = list(sources)
    lines = ["| task | model | metric | score | setting | source |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {r['metric']} | {_fmt_published(r['metric'], r['value'])} | "
                     f"{r['setting']} | [{keys.index(r['source_key']) + 1}] |")
    lines.append("")
    lines += [f"- [{i + 1}] {sources[k]}" for i, k in enumerate(keys)]
    return "\n".join(lines)
