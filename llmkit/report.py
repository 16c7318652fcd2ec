"""`llmkit report RECIPE_OR_RUNS_DIR`: the report card of a model's life.

Reads run directories only (manifests, metrics, pictures, samples; nothing is re-computed) and
writes ``<runs dir>/report.md`` and a self-contained ``report.html`` (pictures embedded) with,
per stage: what it did, its key numbers before -> after (each stage's ``SUMMARY``, recorded in
its manifest), its curves, greedy answers before and after training, wall time and steps; then
the evaluation comparison when `make eval` made one; and the machine and library versions the
runs were made on.  `llmkit run` writes it at the end of every recipe run.

The first table (`stage | time | steps | what changed (held-out) | output`) is the one the
README shows for the demo: it is copied from a report, never typed by hand.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

# what each stage does, in one line (the stage modules' docstrings say it at length)
WHAT = {
    "tokenizer": "trains a byte-level BPE tokenizer on the corpus (`tokenizers`)",
    "pretrain": "pretrains a causal LM from scratch (or continues one) on packed text blocks",
    "sft": "supervised fine-tuning on conversations, loss on the answers only (TRL SFTTrainer)",
    "reward": "trains a reward model on chosen/rejected pairs (TRL RewardTrainer)",
    "dpo": "direct preference optimisation over the SFT model (TRL DPOTrainer)",
    "grpo": "reinforcement learning with verifiable rewards, group-relative advantages (TRL GRPOTrainer)",
    "ppo": "PPO against the reward model and reward functions (llmkit's own trainer)",
    "merge": "folds a LoRA adapter into its base",
}
SHOWN_SAMPLES = 3


def find_runs(target: str | Path) -> tuple[Path, list[tuple[str, Path]]]:
    """(directory the report goes to, [(stage name, run dir)] in the order of the chain).

    TARGET is a recipe directory (its pipeline.yaml and each stage's output_dir) or a directory
    holding run directories (ordered by when they finished)."""
    from llmkit.runs import read_manifest

    target = Path(target)
    if not target.is_dir():
        raise LlmkitError(f"{target} is not a directory: give a recipe (recipes/tiny-es) or a runs directory (runs/tiny-es)")
    if (target / "pipeline.yaml").is_file():
        from llmkit.config import read_yaml
        from llmkit.pipeline import read_pipeline

        _, stages = read_pipeline(target)
        found = []
        for s in stages:
            out = read_yaml(s["config"]).get("output_dir") if Path(s["config"]).is_file() else None
            if out and read_manifest(out):
                found.append((s["name"], Path(out)))
        if not found:
            raise LlmkitError(f"no finished run of {target} yet: run it first (llmkit run {target}, or make demo)")
        parents = {p.parent for _, p in found}
        return (parents.pop() if len(parents) == 1 else Path(found[-1][1]).parent), found
    found = [(d.name, d, m) for d in sorted(target.iterdir()) if d.is_dir() and (m := read_manifest(d)) and m.get("stage") != "eval"]
    if not found:
        raise LlmkitError(f"{target} holds no finished run (no */manifest.json)")
    # finished_at has one-second resolution, so a run that finished in the same second as its
    # input (a tiny tokenizer, then a tiny pretrain) is ordered after it by its manifest's upstream
    upstream = {d.resolve(): {Path(u).resolve() for u in (m.get("upstream") or {})} for _, d, m in found}

    def depth(d: Path, seen: frozenset = frozenset()) -> int:
        ups = [u for u in upstream.get(d, ()) if u in upstream and u not in seen]
        return 1 + max((depth(u, seen | {d}) for u in ups), default=-1)

    found.sort(key=lambda x: (x[2].get("finished_at", ""), depth(x[1].resolve())))
    return target, [(n, d) for n, d, _ in found]


def _is_share(metric: str | None) -> bool:
    """A share of examples (exact/format match, accuracies, round-trip), shown in %."""
    m = metric or ""
    return m.endswith("_match") or m.endswith("accuracy") or "accuracy_reward" in m or m == "roundtrip_rate"


def _fmt(v: Any, metric: str | None = None) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and _is_share(metric):
        return f"{100 * v:.1f} %"
    return _fmt_plain(v)


def _fmt_plain(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "–" if v is None else str(v)


NOISE_NOTE = ("Noise: a share in brackets is its 95 % Wilson interval on the n held-out items it was measured on; "
              "\"paired\" counts the items training fixed and broke (same items before and after) with McNemar's "
              "exact p, or for a score the prompts scored higher and lower with the sign test's p: a gain is beyond "
              "noise when p < 0.05.")


def _with_noise(v: Any, row: dict[str, Any]) -> str:
    """A share with its 95 % Wilson interval when the row knows its item count."""
    text = _fmt(v, row.get("metric"))
    if isinstance(v, (int, float)) and _is_share(row.get("metric")) and row.get("n"):
        from llmkit.stats import wilson

        lo, hi = wilson(float(v), int(row["n"]))
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def _change(row: dict[str, Any]) -> str:
    from llmkit.stats import p_text

    before = f"{_with_noise(row['before'], row)} → " if row.get("before") is not None else ""
    text = f"{row['label']} {before}{_with_noise(row['after'], row)}"
    notes = [f"n = {row['n']}"] if row.get("n") and (_is_share(row.get("metric")) or row.get("paired")) else []
    pr = row.get("paired")
    if pr and "fixed" in pr:
        notes.append(f"paired: {pr['fixed']} fixed, {pr['broken']} broken, McNemar p {p_text(pr['p'])}")
    elif pr:
        notes.append(f"paired: {pr['higher']} higher, {pr['lower']} lower, sign test p {p_text(pr['p'])}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _samples(run: Path) -> list[dict[str, str]]:
    """[{"prompt", "before", "after", "reference"}] from a run's samples.jsonl (sft, grpo, ppo)."""
    f = run / "samples.jsonl"
    if not f.is_file():
        return []
    out = []
    for line in f.read_text(encoding="utf-8").splitlines()[:SHOWN_SAMPLES]:
        r = json.loads(line)
        prompt = r.get("prompt")
        if isinstance(prompt, list):
            prompt = " / ".join(m.get("content", "") for m in prompt if m.get("role") != "system")
        out.append({"prompt": str(prompt), "before": r.get("before", r.get("generated_before")),
                    "after": r.get("after", r.get("generated")), "reference": r.get("reference", r.get("answer"))})
    return out


def collect(target: str | Path) -> dict[str, Any]:
    """Everything the report shows, read from the run directories."""
    from llmkit.runs import read_manifest
    from llmkit.stages import manifest_summary

    where, found = find_runs(target)
    stages = []
    for name, run in found:
        m = read_manifest(run) or {}
        rows = manifest_summary(m, name)
        stages.append({
            "name": name, "stage": m.get("stage", name), "run": str(run), "what": WHAT.get(m.get("stage", ""), ""),
            "mode": (m.get("metrics") or {}).get("mode"), "wall_time_s": m.get("wall_time_s"), "steps": m.get("steps"),
            "summary": rows, "lineage": [s["path"] for s in m.get("lineage") or []],
            "pictures": sorted(str(p) for p in run.glob("*.png")), "samples": _samples(run),
            "finished_at": m.get("finished_at"), "versions": m.get("versions") or {}, "host": m.get("host") or {},
            "git_revision": m.get("git_revision"),
        })
    ev = where / "eval"
    compare = {"md": (ev / "compare.md").read_text(encoding="utf-8") if (ev / "compare.md").is_file() else None,
               "png": str(ev / "compare.png") if (ev / "compare.png").is_file() else None}
    last = stages[-1]
    return {"title": str(target), "dir": str(where), "stages": stages, "compare": compare,
            "host": last["host"], "versions": last["versions"], "git_revision": last["git_revision"],
            "total_s": sum(s["wall_time_s"] or 0 for s in stages)}


def demo_table(card: dict[str, Any]) -> str:
    """The README's table: stage | time | steps | what changed (held-out) | output."""
    lines = ["| stage | time | steps | what changed (held-out) | output |", "|---|---|---|---|---|"]
    for s in card["stages"]:
        t = f"{s['wall_time_s']:.1f} s" if isinstance(s["wall_time_s"], (int, float)) else "–"
        name = s["name"] + (f" ({s['mode']})" if s["mode"] and s["mode"] != "full" else "")
        changed = "; ".join(_change(r) for r in s["summary"]) or "–"
        lines.append(f"| {name} | {t} | {s['steps'] or '–'} | {changed} | `{s['run']}` |")
    return "\n".join(lines)


def _machine(card: dict[str, Any]) -> str:
    v = card["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "trl", "peft", "accelerate", "datasets") if v.get(k))
    h = card["host"]
    return (f"{h.get('device', '?')}, {h.get('platform', '?')}, Python {h.get('python', '?')}; {libs}; "
            f"llmkit at git {str(card.get('git_revision') or '?')[:10]}")


def to_markdown(card: dict[str, Any]) -> str:
    out = [f"# Report card: {card['title']}", "",
           f"{len(card['stages'])} stages, {card['total_s']:.0f} s of training and measuring in all. "
           f"Made on: {_machine(card)}.", "", demo_table(card), "", NOISE_NOTE, ""]
    for s in card["stages"]:
        out += [f"## {s['name']}", "", f"{s['what']}. Run `{s['run']}`"
                + (f", {s['mode']}" if s["mode"] else "") + (f", {s['steps']} steps" if s["steps"] else "")
                + (f", {s['wall_time_s']:.1f} s" if isinstance(s["wall_time_s"], (int, float)) else "") + "."]
        if len(s["lineage"]) > 1:
            out += ["", "Trained on: " + " → ".join(f"`{p}`" for p in s["lineage"][:-1])]
        if s["summary"]:
            out += ["", "| held-out | before | after |", "|---|---|---|"]
            out += [f"| {r['label']} | {_with_noise(r['before'], r) if r['before'] is not None else '–'} | {_with_noise(r['after'], r)} |"
                    for r in s["summary"]]
        for p in s["pictures"]:
            out += ["", f"![{Path(p).stem}]({Path(p).relative_to(card['dir']) if Path(p).is_relative_to(card['dir']) else p})"]
        if s["samples"]:
            out += ["", "| prompt | before | after |" + (" expected |" if any(x["reference"] for x in s["samples"]) else ""),
                    "|---|---|---|" + ("---|" if any(x["reference"] for x in s["samples"]) else "")]
            for x in s["samples"]:
                with_reference = any(y["reference"] for y in s["samples"])
                cells = [x["prompt"], x["before"] or "–", x["after"] or "–"] + ([x["reference"] or ""] if with_reference else [])
                out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ")[:160] for c in cells) + " |")
        out.append("")
    if card["compare"]["md"]:
        out += ["## Evaluation (llmkit eval --compare)", "", card["compare"]["md"].strip(), ""]
    return "\n".join(out) + "\n"


_CSS = ("body{font:15px/1.5 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}td:nth-child(2){white-space:nowrap}img{max-width:100%;border:1px solid #eee}"
        "code{background:#f5f5f5;padding:0 .2em}"
        "section{border-top:1px solid #ddd;margin-top:1.5em}.small{color:#666;font-size:13px}")


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(card: dict[str, Any]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>llmkit report: {e(card['title'])}</title>"
             f"<style>{_CSS}</style></head><body><h1>Report card: {e(card['title'])}</h1>",
             f"<p class='small'>{len(card['stages'])} stages, {card['total_s']:.0f} s in all. Made on: {e(_machine(card))}.</p>"]
    rows = []
    for s in card["stages"]:
        t = f"{s['wall_time_s']:.1f} s" if isinstance(s["wall_time_s"], (int, float)) else "–"
        rows.append([s["name"], t, s["steps"] or "–", "; ".join(_change(r) for r in s["summary"]) or "–", s["run"]])
    parts.append(_table(["stage", "time", "steps", "what changed (held-out)", "output"], rows))
    parts.append(f"<p class='small'>{e(NOISE_NOTE)}</p>")
    for s in card["stages"]:
        what = re.sub(r"`([^`]+)`", r"<code>\1</code>", e(s["what"]))
        parts.append(f"<section id='{e(s['name'])}'><h2>{e(s['name'])}</h2><p>{what}. Run <code>{e(s['run'])}</code>"
                     + (f", {e(str(s['mode']))}" if s["mode"] else "") + (f", {s['steps']} steps" if s["steps"] else "")
                     + (f", {s['wall_time_s']:.1f} s" if isinstance(s["wall_time_s"], (int, float)) else "") + ".</p>")
        if len(s["lineage"]) > 1:
            parts.append("<p class='small'>Trained on: " + " → ".join(f"<code>{e(p)}</code>" for p in s["lineage"][:-1]) + "</p>")
        if s["summary"]:
            rows = [[r["label"], _with_noise(r["before"], r) if r["before"] is not None else "–", _with_noise(r["after"], r)]
                    for r in s["summary"]]
            parts.append(_table(["held-out", "before", "after"], rows))
        parts += [_img(p) for p in s["pictures"]]
        if s["samples"]:
            ref = any(x["reference"] for x in s["samples"])
            parts.append(_table(["prompt", "before", "after"] + (["expected"] if ref else []),
                                [[x["prompt"], x["before"] or "–", x["after"] or "–"] + ([x["reference"] or ""] if ref else [])
                                 for x in s["samples"]]))
        parts.append("</section>")
    if card["compare"]["md"] or card["compare"]["png"]:
        parts.append("<section id='eval'><h2>Evaluation (llmkit eval --compare)</h2>")
        if card["compare"]["md"]:
            parts.append(f"<pre>{e(card['compare']['md'])}</pre>")
        if card["compare"]["png"]:
            parts.append(_img(card["compare"]["png"]))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_after_run(recipe: str | Path) -> None:
    """`llmkit run` (and `llmkit.run_recipe`) end with the recipe's report card (main process)."""
    from llmkit.runs import is_main_process

    if is_main_process():
        md, page = write_report(recipe)
        print(f"llmkit run: report card in {md} and {page}", flush=True)


def write_report(target: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html next to the runs; returns their paths."""
    card = collect(target)
    where = Path(card["dir"])
    md, page = where / "report.md", where / "report.html"
    for path, text in ((md, to_markdown(card)), (page, to_html(card))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # never a half-written report
    return md, page
