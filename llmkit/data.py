"""Dataset loading for every stage: local files or hub ids, mixtures, validation, conversion.

A dataset entry in a recipe is a path/hub id or a mapping::

    datasets:
      - data/sft_train.jsonl                        # local JSONL/JSON/Parquet/CSV/TXT or a directory
      - {path: bertin-project/alpaca-spanish, split: train, weight: 0.5, format: alpaca}

``weight`` samples a fraction (<1) or repeats (>1) a source; ``format`` converts common
instruction layouts (alpaca, dolly) and ShareGPT chats (``conversations`` of ``from``/``value``,
``sharegpt``) to TRL's ``messages`` and GSM8K-style math (question,
answer ending in ``#### N``) to ``prompt``/``answer``; ``columns`` renames columns.  Local
JSONL is parsed here line by line so that a malformed row is reported with its line number,
and every row of a local file (a sample of a hub set) is checked against the schema the
stage needs before any model is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError

SPEC_KEYS = {"path", "name", "split", "weight", "format", "columns", "data_files"}
LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".txt"}
ROLES = {"system", "user", "assistant", "tool"}
CHECK_SAMPLE = 2000  # rows checked for hub data sets (local files: every row)


def normalize_specs(specs: Any, key: str) -> list[dict[str, Any]]:
    if specs is None:
        return []
    if isinstance(specs, (str, dict)):
        specs = [specs]
    if not isinstance(specs, list):
        raise LlmkitError(f"'{key}' must be a path, a mapping or a list of them, got {type(specs).__name__}")
    out = []
    for i, s in enumerate(specs):
        if isinstance(s, str):
            s = {"path": s}
        if not isinstance(s, dict) or "path" not in s:
            raise LlmkitError(f"'{key}' entry {i}: needs at least a 'path' (file, directory or hub id)")
        bad = set(s) - SPEC_KEYS
        if bad:
            raise LlmkitError(f"'{key}' entry {i}: unknown keys {sorted(bad)}; valid: {sorted(SPEC_KEYS)}")
        w = s.get("weight", 1.0)
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w <= 0:
            raise LlmkitError(f"'{key}' entry {i} ({s['path']}): weight must be a positive number, got {w!r}")
        out.append(dict(s))
    return out


def _is_local(spec: dict[str, Any]) -> bool:
    p = str(spec["path"])
    return Path(p).exists() or Path(p).suffix in LOCAL_SUFFIXES or p.startswith((".", "/", "~"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LlmkitError(f"cannot read {path}: {exc.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        raw = raw[3:]
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise LlmkitError(f"{path} line {lineno}: not valid UTF-8") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LlmkitError(f"{path} line {lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise LlmkitError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
        try:  # JSON may escape lone surrogates ("\ud800") that no UTF-8 text can hold
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise LlmkitError(f"{path} line {lineno}: contains an invalid unicode escape (a lone surrogate)") from None
        row["__line__"] = lineno
        rows.append(row)
    return rows


def _read_local(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix in LOCAL_SUFFIXES and f.is_file())
        if not files:
            raise LlmkitError(f"dataset directory {path} holds no {sorted(LOCAL_SUFFIXES)} files")
        return [r for f in files for r in _read_local(f)]
    if not path.is_file():
        raise LlmkitError(f"dataset file not found: {path}")
    suffix = path.suffix
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="strict")
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LlmkitError(f"{path}: malformed JSON at line {exc.lineno} ({exc.msg})") from None
            if not all(isinstance(r, dict) for r in rows):
                raise LlmkitError(f"{path}: expected a list of JSON objects")
            return [{**r, "__line__": i + 1} for i, r in enumerate(rows)]
        return read_jsonl(path)
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]
        return [{"text": p, "__line__": i + 1} for i, p in enumerate(paras)]
    import datasets

    kind = {".parquet": "parquet", ".csv": "csv"}[suffix]
    ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    return [{**r, "__line__": i + 1} for i, r in enumerate(ds)]


def _convert(rows: list[dict[str, Any]], spec: dict[str, Any], source: str, unit: str = "row") -> list[dict[str, Any]]:
    cols = spec.get("columns") or {}
    if cols:
        if not isinstance(cols, dict):
            raise LlmkitError(f"{source}: 'columns' must map old names to new names")
        rows = [{cols.get(k, k): v for k, v in r.items()} for r in rows]
    fmt = spec.get("format")
    if fmt is None:
        return rows
    if fmt == "gsm8k":
        return [_gsm8k_row(r, source) for r in rows]
    if fmt == "sharegpt":
        return [_sharegpt_row(r, source, unit) for r in rows]
    layouts = {"alpaca": ("instruction", "input", "output"), "dolly": ("instruction", "context", "response")}
    if fmt not in layouts:
        raise LlmkitError(f"{source}: unknown format {fmt!r}; known: {sorted(layouts) + ['gsm8k', 'sharegpt']}")
    ins, ctx, out = layouts[fmt]
    converted = []
    for r in rows:
        for c in (ins, out):
            if not isinstance(r.get(c), str):
                raise LlmkitError(f"{source} {unit} {r.get('__line__', '?')}: format {fmt} needs a text column '{c}'")
        user = r[ins] if not r.get(ctx) else f"{r[ins]}\n\n{r[ctx]}"
        converted.append(
            {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": r[out]}], "__line__": r.get("__line__")}
        )
    return converted


# ShareGPT speakers ('from') -> chat roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _sharegpt_row(r: dict[str, Any], source: str, unit: str = "row") -> dict[str, Any]:
    """ShareGPT layout ('conversations': [{from: human|gpt|system, value}]) -> TRL's 'messages'."""
    where = f"{source} {unit} {r.get('__line__', '?')}"
    conv = r.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise LlmkitError(f"{where}: format sharegpt needs 'conversations', a non-empty list of {{from, value}} messages")
    messages = []
    for i, m in enumerate(conv, start=1):
        if not isinstance(m, dict) or not isinstance(m.get("from"), str) or not isinstance(m.get("value"), str):
            raise LlmkitError(f"{where}: message {i} of 'conversations' needs a string 'from' and a string 'value'")
        role = SHAREGPT_ROLES.get(m["from"].strip().lower())
        if role is None:
            raise LlmkitError(f"{where}: message {i} of 'conversations' has an unknown speaker 'from': {m['from']!r} "
                              f"(format sharegpt knows {', '.join(SHAREGPT_ROLES)})")
        messages.append({"role": role, "content": m["value"]})
    return {"messages": messages, "__line__": r.get("__line__")}


# layouts a source may have without 'format', and the format that converts each: suggested in
# the error when a stage's columns are missing
KNOWN_LAYOUTS = (
    ({"conversations"}, "ShareGPT (conversations of from/value messages)", "sharegpt"),
    ({"instruction", "output"}, "Alpaca (instruction/input/output)", "alpaca"),
    ({"instruction", "response"}, "Dolly (instruction/context/response)", "dolly"),
    ({"question", "answer"}, "GSM8K (question/answer ending in '#### N')", "gsm8k"),
)


GSM8K_INSTRUCTION = "Razona paso a paso y termina con «La respuesta es N»."


def _gsm8k_row(r: dict[str, Any], source: str) -> dict[str, Any]:
    """GSM8K layout ('question', 'answer' ending in '#### N') -> a chat prompt and the number."""
    q, a = r.get("question"), r.get("answer")
    if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
        raise LlmkitError(f"{source} row {r.get('__line__', '?')}: format gsm8k needs 'question' and an 'answer' ending in '#### N'")
    number = a.rsplit("####", 1)[1].strip().replace(",", "")
    return {"prompt": [{"role": "user", "content": f"{q}\n{GSM8K_INSTRUCTION}"}], "answer": number, "__line__": r.get("__line__")}


def load_source(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], str, bool]:
    """Rows of one source, the name used in messages, and whether it is local."""
    path = str(spec["path"])
    if _is_local(spec):
        rows = _read_local(Path(os.path.expanduser(path)))
        local = True
    else:
        import datasets

        try:
            ds = datasets.load_dataset(path, spec.get("name"), split=spec.get("split", "train"), data_files=spec.get("data_files"))
        except Exception as exc:  # the hub, a missing config, offline mode...: one line naming the repo and the fix
            from llmkit import hub

            raise hub.explain(exc, path, "dataset", spec.get("revision")) from None
        rows = [{**r, "__line__": i} for i, r in enumerate(ds)]
        local = False
    if not rows:
        raise LlmkitError(f"dataset {path} is empty")
    return _convert(rows, spec, path, "line" if local else "row"), path, local


def _weighted(rows: list[dict[str, Any]], weight: float, seed: int) -> list[dict[str, Any]]:
    import random

    if weight == 1:
        return rows
    rng = random.Random(seed)
    whole, frac = int(weight), weight - int(weight)
    out = rows * whole
    if frac:
        out += rng.sample(rows, max(1, round(frac * len(rows))))
    return out


# --------------------------------------------------------------------------- schemas

def _check_messages(msgs: Any, where: str, col: str, need_assistant_last: bool = True) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise LlmkitError(f"{where}: '{col}' must be a non-empty list of {{role, content}} messages")
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise LlmkitError(f"{where}: every message in '{col}' needs a string 'role' and a string 'content'")
        if m["role"] not in ROLES:
            raise LlmkitError(f"{where}: unknown role {m['role']!r} in '{col}' (valid: {sorted(ROLES)})")
    if need_assistant_last and msgs[-1]["role"] != "assistant":
        raise LlmkitError(f"{where}: the last message of '{col}' must be the assistant's")
    if need_assistant_last and not msgs[-1]["content"].strip():
        raise LlmkitError(f"{where}: the assistant message in '{col}' is empty")


def _nonempty_text(v: Any, where: str, col: str) -> None:
    if not isinstance(v, str):
        raise LlmkitError(f"{where}: '{col}' must be a string, got {type(v).__name__}")
    if not v.strip():
        raise LlmkitError(f"{where}: '{col}' is empty")


def detect_format(columns: set[str], kind: str, source: str) -> str:
    """The TRL layout of a source for a stage kind, or a clear error naming what is missing."""
    if kind == "text":
        if "text" in columns:
            return "text"
        need = "'text'"
    elif kind == "sft":
        if "messages" in columns:
            return "messages"
        if {"prompt", "completion"} <= columns:
            return "prompt_completion"
        if "text" in columns:
            return "text"
        need = "'messages', or 'prompt' and 'completion', or 'text'"
    elif kind == "preference":
        if {"chosen", "rejected"} <= columns:
            return "preference"
        need = "'chosen' and 'rejected' (and optionally 'prompt')"
    elif kind == "prompt":
        if "prompt" in columns:
            return "prompt"
        need = "'prompt'"
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    found = ", ".join(sorted(c for c in columns if c != "__line__")) or "none"
    hint = ""
    for cols, name, fmt in KNOWN_LAYOUTS:
        if cols <= columns and (kind == "sft" and fmt != "gsm8k" or kind == "prompt" and fmt == "gsm8k"):
            hint = f". This looks like {name}; add format: {fmt} to this dataset's entry in the config"
            break
    raise LlmkitError(f"{source}: needs column(s) {need}; found: {found}{hint}")


def check_row(row: dict[str, Any], layout: str, where: str) -> None:
    if layout == "text":
        _nonempty_text(row.get("text"), where, "text")
    elif layout == "messages":
        _check_messages(row.get("messages"), where, "messages")
    elif layout in ("prompt_completion", "preference", "prompt"):
        prompt = row.get("prompt")
        if layout != "preference" or prompt is not None:
            if isinstance(prompt, list):
                _check_messages(prompt, where, "prompt", need_assistant_last=False)
            else:
                _nonempty_text(prompt, where, "prompt")
        answers = {"prompt_completion": ("completion",), "preference": ("chosen", "rejected"), "prompt": ()}[layout]
        for col in answers:
            v = row.get(col)
            if isinstance(v, list):
                _check_messages(v, where, col)
            else:
                _nonempty_text(v, where, col)


def load_rows(specs: Any, kind: str, seed: int = 42, key: str = "datasets") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Load, check and mix the sources of ``key``. Returns (rows, provenance for the manifest)."""
    specs = normalize_specs(specs, key)
    if not specs:
        raise LlmkitError(f"no '{key}' given: name at least one dataset file or hub id")
    all_rows: list[dict[str, Any]] = []
    layout = None
    provenance = []
    for i, spec in enumerate(specs):
        rows, name, local = load_source(spec)
        check = rows if local else rows[:CHECK_SAMPLE]
        unit = "line" if local else "row"
        fmt, shape, ref = _majority_shape(check, kind, name, unit)
        if layout is not None and fmt != layout:
            raise LlmkitError(f"{name}: layout '{fmt}' differs from the first dataset's '{layout}'; a mixture needs one layout")
        layout = fmt
        for r in check:
            where = f"{name} {unit} {r.get('__line__', '?')}"
            got = detect_format(set(r), kind, where)
            if got != fmt:
                raise LlmkitError(f"{where}: layout '{got}' differs from the file's '{fmt}' (as on {unit} {ref}); "
                                  "one file needs one layout")
            check_row(r, fmt, where)
            if row_shape(r, fmt) != shape:
                raise LlmkitError(f"{where}: columns/types {row_shape(r, fmt)} differ from {unit} {ref}'s {shape}; "
                                  "one file needs one layout")
        keep = _layout_columns(fmt, next(r for r in check if row_shape(r, fmt) == shape))
        rows = [{c: r.get(c) for c in keep} for r in rows]
        rows = _weighted(rows, float(spec.get("weight", 1.0)), seed + i)
        provenance.append({"path": name, "rows": len(rows), "weight": spec.get("weight", 1.0), "sha256": _sha256(name) if local else None})
        all_rows += rows
    return all_rows, provenance


def load_splits(datasets: Any, eval_datasets: Any, kind: str, seed: int) -> tuple[list[dict], list[dict], dict[str, list]]:
    """Training rows, held-out rows (empty when no eval_datasets) and their provenance."""
    rows, prov = load_rows(datasets, kind, seed)
    eval_rows, eval_prov = load_rows(eval_datasets, kind, seed, "eval_datasets") if eval_datasets else ([], [])
    return rows, eval_rows, {"datasets": prov, "eval_datasets": eval_prov}


LAYOUT_COLUMNS = {
    "text": ["text"],
    "messages": ["messages"],
    "prompt_completion": ["prompt", "completion"],
    "preference": ["prompt", "chosen", "rejected"],
    "prompt": ["prompt"],
}


def _majority_shape(rows: list[dict[str, Any]], kind: str, name: str, unit: str) -> tuple[str, dict[str, str], Any]:
    """The layout and shape most rows share (ties: the earliest), so that the odd row out is
    the one reported; rows with no usable layout at all are reported first."""
    from collections import Counter

    counts: Counter = Counter()
    first: dict[str, Any] = {}
    for r in rows:
        where = f"{name} {unit} {r.get('__line__', '?')}"
        fmt = detect_format(set(r), kind, where)
        key = json.dumps([fmt, row_shape(r, fmt)], sort_keys=True)
        counts[key] += 1
        first.setdefault(key, r.get("__line__", "?"))
    best = max(counts, key=lambda k: (counts[k], -list(first).index(k)))
    fmt, shape = json.loads(best)
    return fmt, shape, first[best]


def row_shape(row: dict[str, Any], layout: str) -> dict[str, str]:
    """Which layout columns a row has and whether each is text or chat messages (for the
    'prompt' layout also its extra columns, e.g. 'answer', and their JSON types): every row of
    a file must have the first row's shape, or Arrow and the trainers fail later."""
    cols = [c for c in LAYOUT_COLUMNS[layout] if c in row]
    if layout == "prompt":
        cols += sorted(c for c in row if c not in ("prompt", "__line__"))
    return {c: "messages" if isinstance(row[c], list) else type(row[c]).__name__ for c in cols}


def _layout_columns(layout: str, ref: dict[str, Any]) -> list[str]:
    """The columns kept, from a row with the file's shape (every checked row has it)."""
    base = LAYOUT_COLUMNS[layout]
    extra = [c for c in ref if c not in base and c != "__line__"] if layout == "prompt" else []
    if layout == "preference" and "prompt" not in ref:
        base = ["chosen", "rejected"]
    return base + extra


def _sha256(path: str) -> str | None:
    import hashlib

    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def to_dataset(rows: list[dict[str, Any]]):
    import datasets

    return datasets.Dataset.from_list(rows)


def split_rows(rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], eval_split_size: float, seed: int):
    """(train rows, held-out rows): ``eval_rows`` when given, else ``eval_split_size`` of the
    rows (a fraction < 1 or a count >= 1) after a seeded shuffle, else no held-out rows."""
    import random

    if eval_rows or not eval_split_size or eval_split_size <= 0:
        return rows, eval_rows
    rows = rows[:]
    random.Random(seed).shuffle(rows)
    n = int(round(eval_split_size * len(rows))) if eval_split_size < 1 else int(eval_split_size)
    n = max(1, min(n, len(rows) - 1))
    return rows[n:], rows[:n]


def train_eval_split(rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]] | None, eval_split_size: float, seed: int):
    """split_rows as datasets.Dataset (held-out: None when there is none)."""
    train, held = split_rows(rows, eval_rows or [], eval_split_size, seed)
    return to_dataset(train), (to_dataset(held) if held else None)
