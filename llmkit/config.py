"""Recipe loading: one YAML file plus ``--key value`` overrides into the stage's dataclasses.

A stage declares a list of dataclasses (llmkit's own arguments, TRL's ``ModelConfig``, a
``TrainingArguments``/TRL config).  Their field names together are the stage's keys, so every
key a user knows from TRL or transformers is spelled the same here.  Unknown keys are rejected
with the closest valid names; values are checked against the field's type before any library
sees them, so a typo costs seconds, not GPU hours.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class LlmkitError(Exception):
    """A problem with the user's input: printed as one message, exit code 2, no traceback."""


def did_you_mean(word: str, choices, n: int = 3) -> str:
    """' Did you mean: a, b?' with the closest of ``choices``, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key, first, second)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last
    one silently), at any depth.  Keys brought in by a ``<<`` merge may be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure (a key written twice included) into a
    one-line LlmkitError."""
    path = Path(path)
    if not path.is_file():
        raise LlmkitError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except _DuplicateKey as dup:
        lines = f"lines {dup.first} and {dup.second}" if dup.first != dup.second else f"both on line {dup.first}"
        raise LlmkitError(f"{path}: key {dup.key!r} appears twice ({lines}); keep one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LlmkitError(f"{path}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError:
        raise LlmkitError(f"{path}: not valid UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LlmkitError(f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    return data


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``["--lr", "1e-4", "--use_peft", "--x=3"]`` -> ``{"lr": "1e-4", "use_peft": "true", "x": "3"}``.

    Values stay strings here; they are typed against the dataclass fields in ``_coerce``.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise LlmkitError(f"unexpected argument {tok!r}: overrides are written --key value")
        key = tok[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 2
        else:
            value = "true"  # a bare flag
            i += 1
        out[key] = value
    return out


def _field_types(tp: Any) -> tuple[set[type], list[Any]]:
    """Flatten Optional/Union annotations into a set of plain types (and Literal choices)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        plain: set[type] = set()
        literals: list[Any] = []
        for arg in typing.get_args(tp):
            p, lits = _field_types(arg)
            plain |= p
            literals += lits
        return plain, literals
    if origin is typing.Literal:
        return set(), list(typing.get_args(tp))
    if origin is not None:
        return {origin}, []
    if isinstance(tp, type):
        return {tp}, []
    return {object}, []


def _coerce(key: str, value: Any, field: dataclasses.Field, from_cli: bool, source: str, tp: Any = None) -> Any:
    value = _coerce_value(key, value, field, from_cli, source, tp)
    plain, _ = _field_types(field.type if tp is None else tp)
    enums = [t for t in plain if isinstance(t, type) and issubclass(t, enum.Enum)]
    if enums and isinstance(value, str):  # e.g. optim: OptimizerNames | str
        choices = [str(m.value) for e in enums for m in e]
        if value not in choices:
            raise LlmkitError(f"{source}: unknown {key} {value!r}.{did_you_mean(value, choices)} (valid: {', '.join(choices)})")
    return value


def _coerce_value(key: str, value: Any, field: dataclasses.Field, from_cli: bool, source: str, tp: Any = None) -> Any:
    plain, literals = _field_types(field.type if tp is None else tp)
    if from_cli and isinstance(value, str):
        final, value = _parse_cli_value(value, plain)
        if final:
            return value
    if value is None:
        if type(None) in plain or field.default is None:
            return None
        raise LlmkitError(f"{source}: '{key}' cannot be empty")
    if bool in plain and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    number = _coerce_number(key, value, plain, source)
    if number is not None:
        return number
    if bool in plain and not (plain - {bool, type(None)}) and not isinstance(value, bool):
        raise LlmkitError(f"{source}: '{key}' must be true or false, got {value!r}")
    if literals and value not in literals:
        raise LlmkitError(f"{source}: '{key}' must be one of {literals}, got {value!r}")
    if list in plain and isinstance(value, str) and not (plain & {str}):
        return [v.strip() for v in value.split(",") if v.strip()]
    if str in plain and isinstance(value, (int, float)) and not (plain & {int, float}):
        return str(value)
    return value


def _parse_cli_value(value: str, plain: set[type]) -> tuple[bool, Any]:
    """(final, value) for a ``--key value`` string: None for 'none'/'null' where the field
    allows it and the text itself for a str-only field (both final), else the text read as
    YAML (``3`` -> 3, ``[a, b]`` -> a list), to be checked against the field's type."""
    if value.lower() in ("none", "null") and type(None) in plain:
        return True, None
    if str in plain and not (plain & {int, float, bool, list, dict}):
        return True, value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return False, value if (parsed is None and type(None) not in plain) else parsed


def _coerce_number(key: str, value: Any, plain: set[type], source: str) -> int | float | None:
    """``value`` as the field's float or int (None when the field takes neither, or the value
    is kept as it is)."""
    if float in plain and isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            if str not in plain:
                raise LlmkitError(f"{source}: '{key}' must be a number, got {value!r}") from None
    if int in plain and float not in plain and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                if str not in plain:
                    raise LlmkitError(f"{source}: '{key}' must be an integer, got {value!r}") from None
    return None


@dataclasses.dataclass
class StageConfig:
    """The typed result of loading a stage config."""

    args: list[Any]  # one instance per dataclass, in the stage's order
    explicit: dict[str, Any]  # the keys the user set (YAML then CLI), typed
    source: str  # where the config came from, for messages
    # explicit, with numbers as the user wrote them (``warmup_steps: 10`` stays 10 where the
    # field is a float, so explicit holds 10.0): what config.yaml shows; None: explicit
    written: dict[str, Any] | None = None

    def get(self, cls: type) -> Any:
        for a in self.args:
            if isinstance(a, cls):
                return a
        raise KeyError(cls)

    def hash(self) -> str:
        """Identity of a run's config: what the pipeline compares to decide a stage is done."""
        blob = json.dumps(to_plain(self.explicit), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_written(self) -> dict[str, Any]:
        """The keys the user set, numbers as written (for config.yaml)."""
        return dict(self.explicit if self.written is None else self.written)

    def resolved(self) -> dict[str, Any]:
        """Every key with its final value, for config_resolved.yaml (a number the user wrote
        as an integer stays one)."""
        out: dict[str, Any] = {}
        for a in self.args:
            d = a.to_dict() if hasattr(a, "to_dict") else dataclasses.asdict(a)
            for k, v in d.items():
                if not k.startswith("_"):
                    out.setdefault(k, to_plain(v))
        for k, v in (self.written or {}).items():
            if k in out and isinstance(v, int) and not isinstance(v, bool) and isinstance(out[k], float) and out[k] == v:
                out[k] = v
        return out


def to_plain(value: Any) -> Any:
    """Make a value YAML/JSON friendly (enums, paths, tuples, nested)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def stage_fields(classes: list[type]) -> dict[str, tuple[type, dataclasses.Field, Any]]:
    """key -> (owning dataclass, field, resolved type); the first class declaring a key owns it.

    Types are resolved with get_type_hints so that classes written with
    ``from __future__ import annotations`` (string annotations) are typed too."""
    out: dict[str, tuple[type, dataclasses.Field, Any]] = {}
    for cls in classes:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation that cannot be evaluated: fall back to the raw ones
            hints = {}
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                out.setdefault(f.name, (cls, f, hints.get(f.name, f.type)))
    return out


def unknown_key_message(key: str, valid: list[str], source: str) -> str:
    return f"{source}: unknown key '{key}'.{did_you_mean(key, valid)} (`llmkit <stage> --help` lists every key)"


def load_stage_config(
    classes: list[type],
    config_path: str | None,
    overrides: list[str] | dict[str, Any] | None = None,
    defaults: Any = None,
) -> StageConfig:
    """Merge YAML (``config_path``) and overrides into instances of ``classes``.

    ``defaults`` are llmkit's stage defaults (a dict, or a function of the explicit keys that
    returns one): applied only to keys the user did not set.  A key
    declared by several classes (``seed``, ``output_dir``...) is given to each of them.
    """
    fields = stage_fields(classes)
    valid = sorted(fields)
    source = str(config_path) if config_path else "command line"
    explicit: dict[str, Any] = {}
    written: dict[str, Any] = {}
    layers: list[tuple[dict[str, Any], bool, str]] = []
    if config_path:
        layers.append((read_yaml(config_path), False, str(config_path)))
    if overrides:
        ov = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        layers.append((ov, isinstance(overrides, list), "command line"))
    for data, from_cli, src in layers:
        for key, value in data.items():
            if not isinstance(key, str) or key not in fields:
                raise LlmkitError(unknown_key_message(str(key), valid, src))
            _, fld, tp = fields[key]
            explicit[key] = _coerce(key, value, fld, from_cli, src, tp)
            written[key] = _as_written(value, explicit[key], from_cli)
    values = dict((defaults(explicit) if callable(defaults) else defaults) or {})
    values.update(explicit)
    args = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {k: v for k, v in values.items() if k in names}
        try:
            args.append(cls(**kwargs))
        except (ValueError, TypeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlmkitError(f"{source}: invalid configuration: {msg}") from None
    return StageConfig(args=args, explicit=explicit, source=source, written=written)


def _as_written(raw: Any, typed: Any, from_cli: bool) -> Any:
    """``typed``, except that an integer the user wrote (``10``, ``--warmup_steps 10``) that a
    float field made ``10.0`` is kept as the integer."""
    if not isinstance(typed, float) or isinstance(typed, bool):
        return typed
    if from_cli and isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError:
            return typed
    if isinstance(raw, int) and not isinstance(raw, bool) and raw == typed:
        return raw
    return typed


def stage_keys(classes: list[type]):
    """(dataclass, key, default, help text on one line) for every key of a stage's dataclasses, each
    key once (the first class that declares it): what `--help` and the web page's key table list."""
    seen: set[str] = set()
    for cls in classes:
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_") or f.name in seen:
                continue
            seen.add(f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = "(required)"
            yield cls, f.name, default, " ".join(str(f.metadata.get("help", "")).split())


def format_help(stage: str, classes: list[type], doc: str) -> str:
    """Every key with its default and help text, grouped by the dataclass that owns it."""
    lines = [f"usage: llmkit {stage} --config FILE.yaml [--overwrite] [--key value ...]", "", doc.strip(), ""]
    groups: dict[type, list[str]] = {}
    for cls, name, default, text in stage_keys(classes):
        if len(text) > 160:
            text = text[:157] + "..."
        row = f"  --{name} (default: {to_plain(default)!r})"
        groups.setdefault(cls, []).append(f"{row}\n      {text}" if text else row)
    for cls, rows in groups.items():
        lines.append(f"{cls.__module__.split('.')[0]}.{cls.__name__}:")
        lines.extend(rows)
        lines.append("")
    return "\n".join(lines)
