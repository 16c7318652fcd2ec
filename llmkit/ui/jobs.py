"""The page's logic, without the page: recipes and their keys, the command a start runs, the
checks before it, the child processes (start, stop, find again), logs, metrics and run discovery.

Everything here reads the same files the CLI writes (run directories, ``<out>.partial``,
``<out>.lock``) and starts the same commands a user would type; ``app.py`` only draws it.

A started command is a child process in its own process group (``llmkit.ui.child`` runs it and
records its exit status), logging to ``<run's parent>/.ui/<name>.log`` next to a job record
``<name>.json`` (command, pid, log, output_dir, exit status).  Closing the browser, or the page's
process, does not stop it; the records and the run locks find it again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmkit import runs
from llmkit.config import LlmkitError, read_yaml

WHOLE_CHAIN = "*"  # the stage value meaning "the recipe's whole pipeline" (llmkit run)
DATASET_KEYS = ("datasets", "eval_datasets", "heldout_datasets")
INPUT_KEYS = ("model_name_or_path", "tokenizer_name_or_path", "reward_model_path", "ref_model_name_or_path")
STEP_LINE = re.compile(r"\[step (\d+)/(\d+)\][^\n]*?(?:ETA (\d+)s)?\s*$", re.M)
STOPPED = (143, -signal.SIGTERM)  # StageInterrupted (a checkpoint saved at the step's end), or ended by SIGTERM outside a step


@dataclass
class Workspace:
    """Where the page reads and writes: the project (recipes and data, the children's working
    directory) and the runs root, the only place it writes (plus .cache/)."""

    project: Path = field(default_factory=Path.cwd)
    runs_root: Path | None = None
    recipes: Path | None = None

    def __post_init__(self) -> None:
        self.project = Path(self.project).resolve()
        self.runs_root = Path(self.runs_root or self.project / "runs")
        if not self.runs_root.is_absolute():
            self.runs_root = self.project / self.runs_root
        self.runs_root = self.runs_root.resolve()
        self.recipes = Path(self.recipes or self.project / "recipes")
        if not self.recipes.is_absolute():
            self.recipes = self.project / self.recipes

    @property
    def default_root(self) -> bool:
        return self.runs_root == (self.project / "runs").resolve()

    def path(self, value: str | Path) -> Path:
        """A path as the children read it (relative to the project)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.project / p

    def relocate(self, value: Any) -> Any:
        """A recipe value naming something under ``runs/`` moved to the runs root (the page's
        tests and ``--runs DIR``); anything else unchanged."""
        if self.default_root or not isinstance(value, str):
            return value
        parts = Path(value).parts
        if parts and parts[0] == "runs":
            return str(self.runs_root.joinpath(*parts[1:]))
        return value

    def inside(self, value: str | Path) -> bool:
        p = self.path(value).resolve()
        return p == self.runs_root or self.runs_root in p.parents


# ----------------------------------------------------------------------------- recipes and keys


def list_recipes(ws: Workspace) -> list[str]:
    if not ws.recipes.is_dir():
        return []
    return sorted(p.name for p in ws.recipes.iterdir() if (p / "pipeline.yaml").is_file())


def recipe_stages(ws: Workspace, recipe: str) -> list[dict[str, Any]]:
    """The recipe's stages (name, stage, config) from its pipeline.yaml."""
    from llmkit.pipeline import read_pipeline

    _, stages = read_pipeline(ws.recipes / recipe)
    return [{**s, "config": Path(s["config"])} for s in stages]


def stage_entry(ws: Workspace, recipe: str, name: str) -> dict[str, Any]:
    for s in recipe_stages(ws, recipe):
        if s["name"] == name:
            return s
    raise LlmkitError(f"recipe {recipe} has no stage {name!r}")


def config_text(ws: Workspace, recipe: str, name: str) -> str:
    if name == WHOLE_CHAIN:
        return (ws.recipes / recipe / "pipeline.yaml").read_text(encoding="utf-8")
    return stage_entry(ws, recipe, name)["config"].read_text(encoding="utf-8")


def key_rows(stage: str, values: dict[str, Any]) -> list[list[str]]:
    """[key, value in the recipe, default, help] for every key of the stage (the `--help` text)."""
    from llmkit.config import stage_keys, to_plain
    from llmkit.stages import stage_module

    rows = []
    for _, name, default, text in stage_keys(stage_module(stage).CLASSES):
        value = values.get(name, "")
        rows.append([name, "" if value == "" else _scalar(value), _scalar(to_plain(default)), text[:300]])
    rows.sort(key=lambda r: (r[1] == "", r[0]))  # the keys the recipe sets first
    return rows


def help_text(stage: str) -> str:
    """Exactly `llmkit <stage> --help`'s key list."""
    from llmkit.config import format_help
    from llmkit.stages import stage_module

    mod = stage_module(stage)
    return format_help(stage, mod.CLASSES, mod.DOC)


def _scalar(v: Any) -> str:
    """A value as it is written on the command line: true/false, numbers, [a, b] lists."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return "" if v is None else str(v)


def parse_edited(text: str, source: str) -> dict[str, Any]:
    """The editor's YAML, read by llmkit's own reader (same messages as `llmkit --config`),
    from a temporary file in the cache that is removed at once."""
    cache = Path(os.environ.get("LLMKIT_CACHE_DIR", Path.cwd() / ".cache" / "llmkit")) / "ui"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as d:
        f = Path(d) / Path(source).name
        f.write_text(text, encoding="utf-8")
        try:
            return read_yaml(f)
        except LlmkitError as exc:
            raise LlmkitError(str(exc).replace(str(f), f"{source} (edited)")) from None


# ----------------------------------------------------------------------------- the command


@dataclass
class Plan:
    """What a start runs: the argv after `llmkit`, the output directory it writes, its job name."""

    argv: list[str]
    output_dir: Path
    name: str
    stage: str

    def command(self) -> str:
        return "llmkit " + " ".join(shlex.quote(a) for a in self.argv)


def build_plan(ws: Workspace, recipe: str, name: str, edited: str | None = None) -> Plan:
    """The command for a stage of a recipe: `llmkit <stage> --config <its yaml>` plus one
    `--key value` for every key the editor changed or added (and, with a runs root other than
    the project's runs/, every recipe path under runs/ moved there).  Checks nothing else."""
    rdir = ws.recipes / recipe
    rel_recipe = _rel(ws, rdir)
    if name == WHOLE_CHAIN:
        if edited is not None and edited.strip() != config_text(ws, recipe, name).strip():
            raise LlmkitError("the whole chain runs each stage's own YAML; edit a stage's values with that stage chosen")
        if not ws.default_root:
            raise LlmkitError(f"the whole chain writes where its YAMLs say (runs/); this page writes only under {ws.runs_root}: "
                              "start the stages one by one")
        return Plan(["run", rel_recipe], ws.runs_root / recipe, "run", WHOLE_CHAIN)
    entry = stage_entry(ws, recipe, name)
    cfg_file = entry["config"]
    original = read_yaml(cfg_file)
    values = parse_edited(edited, _rel(ws, cfg_file)) if edited is not None else dict(original)
    removed = sorted(set(original) - set(values))
    if removed:
        raise LlmkitError(f"{_rel(ws, cfg_file)}: key {removed[0]!r} was removed in the editor; a command can only set keys: "
                          "give it a value instead (its default is in the table)")
    overrides: dict[str, Any] = {}
    for k, v in values.items():
        moved = ws.relocate(v) if isinstance(v, str) else v
        if k not in original or original[k] != v or moved != v:
            overrides[k] = moved
    argv = [entry["stage"], "--config", _rel(ws, cfg_file)]
    for k, v in overrides.items():
        argv += [f"--{k}", _scalar(v)]
    out = values.get("output_dir")
    if not isinstance(out, str) or not out:
        raise LlmkitError(f"{_rel(ws, cfg_file)}: output_dir is required")
    return Plan(argv, ws.path(ws.relocate(out)), ws.path(ws.relocate(out)).name, entry["stage"])


def _rel(ws: Workspace, p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ws.project))
    except ValueError:
        return str(p)


def validate(ws: Workspace, plan: Plan) -> None:
    """The checks before anything starts, with llmkit's own messages: the stage's config
    (load_config: YAML, keys, types, values), the output inside the runs root, no other process
    on it, a finished run not replaced silently, local datasets and input runs present."""
    if not ws.inside(plan.output_dir):
        raise LlmkitError(f"output_dir {plan.output_dir} is outside {ws.runs_root}, the only place this page writes; "
                          f"choose a directory under it")
    busy = running_job(plan.output_dir)
    if busy or runs.is_locked_by_other(plan.output_dir):
        holder = busy.get("command") if busy else _lock_holder(plan.output_dir)
        raise LlmkitError(f"output_dir {plan.output_dir} is being written by another llmkit process ({holder}); "
                          "wait for it to finish or stop it, or choose another output_dir")
    if plan.stage == WHOLE_CHAIN:
        from llmkit.pipeline import read_pipeline
        from llmkit.stages import load_config

        _, stages = read_pipeline(ws.path(plan.argv[1]))
        for s in stages:
            load_config(s["stage"], str(s["config"]), None)
        return
    from llmkit.stages import load_config

    cwd = os.getcwd()
    os.chdir(ws.project)  # relative paths are read as the child will read them
    try:
        _, cfg = load_config(plan.stage, plan.argv[2], plan.argv[3:])
        if runs.read_manifest(plan.output_dir) is not None and "--overwrite" not in plan.argv:
            m = runs.read_manifest(plan.output_dir)
            raise LlmkitError(f"output_dir {plan.output_dir} already holds a finished '{m.get('stage')}' run "
                              f"(finished {m.get('finished_at', '?')}); choose another output_dir")
        check_inputs(cfg.explicit)
    finally:
        os.chdir(cwd)


def check_inputs(values: dict[str, Any]) -> None:
    """Local datasets that do not exist and input runs that are missing or unfinished, with the
    messages the stage would give a few seconds later."""
    from llmkit.data import LOCAL_SUFFIXES, normalize_specs

    for key in DATASET_KEYS:
        for spec in normalize_specs(values.get(key), key):
            p = str(spec["path"])
            local = Path(p).suffix in LOCAL_SUFFIXES or p.startswith((".", "/", "~"))
            if local and not Path(p).expanduser().exists():
                raise LlmkitError(f"dataset file not found: {p}")
    for key in INPUT_KEYS:
        v = values.get(key)
        if isinstance(v, str) and v:
            runs.require_run(v, key)


def _lock_holder(output_dir: Path) -> str:
    try:
        info = json.loads(runs.lock_path(output_dir).read_text())
        return f"pid {info.get('pid')}: {info.get('command')}"
    except (OSError, ValueError, AttributeError):
        return "see its .lock file"


# ----------------------------------------------------------------------------- child processes


def job_dir(output_dir: Path) -> Path:
    return Path(output_dir).parent / ".ui"


def job_file(output_dir: Path, name: str | None = None) -> Path:
    return job_dir(output_dir) / f"{name or Path(output_dir).name}.json"


def read_job(f: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(f).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_job(f: Path, data: dict[str, Any]) -> None:
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, f)


def job_alive(job: dict[str, Any] | None) -> bool:
    """Whether the job's process group still runs (the pid of its llmkit.ui.child); first reaps
    the page's own children that have ended, so that none lingers as a zombie in its group."""
    reap()
    return bool(job) and job.get("rc") is None and runs.pid_alive(job.get("pid"))


def running_job(output_dir: Path, name: str | None = None) -> dict[str, Any] | None:
    job = read_job(job_file(output_dir, name))
    return job if job_alive(job) else None


def start(ws: Workspace, commands: list[list[str]], output_dir: Path, name: str | None = None,
          kind: str = "train", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start `llmkit <argv>` (several: one after the other, stopping at the first failure) as a
    child in its own process group, in the project directory; returns its job record (with
    ``extra``'s keys, written before the child starts: a later write could race the child's)."""
    f = job_file(output_dir, name)
    if job_alive(read_job(f)):
        raise LlmkitError(f"{read_job(f).get('command')} is still running; stop it first")
    log = f.with_suffix(".log")
    job = {"kind": kind, "commands": commands, "command": " && ".join("llmkit " + shlex.join(c) for c in commands),
           "output_dir": str(output_dir), "log": str(log), "started_at": runs.now(), "started": time.time(),
           "pid": None, "rc": None, **(extra or {})}
    write_job(f, job)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["TQDM_MININTERVAL"] = env.get("TQDM_MININTERVAL", "5")
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "llmkit.ui.child", str(f)], cwd=ws.project, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    job["pid"] = proc.pid
    _children[proc.pid] = proc  # reaped by poll(), so that a finished child is no zombie
    write_job(f, {**(read_job(f) or job), "pid": proc.pid})  # keeps what the child may have written already
    return read_job(f) or job


_children: dict[int, subprocess.Popen] = {}


def reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)


def stop(output_dir: Path, name: str | None = None) -> str:
    """SIGTERM the job's process group: a stage saves a checkpoint and exits (same command resumes)."""
    f = job_file(output_dir, name)
    job = read_job(f)
    if not job_alive(job):
        raise LlmkitError(f"nothing is running for {output_dir}")
    deadline = time.monotonic() + 10
    while not job.get("armed") and job_alive(job) and time.monotonic() < deadline:  # the child's first milliseconds
        time.sleep(0.05)
        job = read_job(f) or job
    try:
        os.killpg(os.getpgid(job["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        pass
    return job["command"]


def wait(output_dir: Path, name: str | None = None, timeout: float = 60.0) -> dict[str, Any] | None:
    """Wait until the job ended (tests, and the page's stop button); returns its record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap()
        job = read_job(job_file(output_dir, name))
        if not job_alive(job):
            return job
        time.sleep(0.2)
    return read_job(job_file(output_dir, name))


def discover(ws: Workspace) -> list[dict[str, Any]]:
    """Every job record under the runs root, with its state (running, finished, stopped,
    failed), newest first; plus runs written right now by a process the page did not start
    (a lock held), so that a run started on the command line shows too."""
    reap()
    found, seen = [], set()
    if not ws.runs_root.is_dir():
        return []
    for f in ws.runs_root.rglob(".ui/*.json"):
        job = read_job(f)
        if not job or "output_dir" not in job:
            continue
        job = {**job, "job_file": str(f), "state": job_state(job)}
        seen.add(str(Path(job["output_dir"])))
        found.append(job)
    for lock in ws.runs_root.rglob("*" + runs.LOCK_SUFFIX):
        out = lock.with_name(lock.name[: -len(runs.LOCK_SUFFIX)])
        if str(out) not in seen and runs.is_locked_by_other(out):
            found.append({"kind": "train", "command": _lock_holder(out), "output_dir": str(out), "state": "running",
                          "started": lock.stat().st_mtime, "log": None, "external": True})
    return sorted(found, key=lambda j: -float(j.get("started") or 0))


def job_state(job: dict[str, Any]) -> str:
    if job_alive(job):
        return "running"
    rc = job.get("rc")
    if rc == 0:
        return "finished"
    if rc in STOPPED:
        return "stopped"
    return "failed" if rc is not None else "lost"  # lost: killed without recording a status


# ----------------------------------------------------------------------------- logs, progress, metrics


def tail(path: str | Path | None, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last lines of a log (progress bars' carriage returns resolved to their last state)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            raw = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    out = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r") for line in raw.split("\n")]
    return "\n".join([x for x in out if x.strip()][-lines:])


def progress(log: str) -> dict[str, Any] | None:
    """The last `[step N/M] ... | ETA Xs` line the stage printed: {step, total, eta_s}."""
    last = None
    for m in STEP_LINE.finditer(log):
        last = m
    if not last:
        return None
    step, total = int(last.group(1)), int(last.group(2))
    eta = int(last.group(3)) if last.group(3) else None
    return {"step": step, "total": total, "eta_s": eta, "fraction": step / total if total else 0.0}


def metrics_file(output_dir: str | Path) -> Path | None:
    """metrics.jsonl of the run: in ``<out>.partial`` while it runs, in ``<out>`` when finished."""
    for d in (runs.staging_path(output_dir), Path(output_dir)):
        f = d / "metrics.jsonl"
        if f.is_file():
            return f
    return None


CURVE_SKIP = {"step", "epoch", "time_s", "learning_rate", "grad_norm", "tokens_per_s", "num_tokens", "total_flos",
              "train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime",
              "eval_samples_per_second", "eval_steps_per_second", "train_loss"}


def curve_rows(output_dir: str | Path) -> list[dict[str, Any]]:
    """Long-format points (step, value, metric) of what the run logs: loss, eval loss, rewards, KL."""
    f = metrics_file(output_dir)
    rows = runs.read_metrics(f) if f else []
    points = []
    for r in rows:
        step = r.get("step")
        if not isinstance(step, (int, float)):
            continue
        for k, v in r.items():
            if k in CURVE_SKIP or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k in ("loss", "eval_loss") or "reward" in k or "kl" in k.lower().split("/")[-1] or k.endswith("_kl"):
                points.append({"step": step, "value": float(v), "metric": k})
    return points


def checkpoints(output_dir: str | Path) -> list[str]:
    d = runs.staging_path(output_dir) / "checkpoints"
    return sorted((p.name for p in d.glob("checkpoint-*") if p.is_dir()), key=lambda n: int(n.split("-")[-1])) if d.is_dir() else []


# ----------------------------------------------------------------------------- runs


def find_runs(ws: Workspace, depth: int = 3) -> list[dict[str, Any]]:
    """Every run directory under the runs root: finished (manifest), partial (``.partial``,
    running when its lock is held) or failed (the page's job ended with an error)."""
    out: list[dict[str, Any]] = []
    if not ws.runs_root.is_dir():
        return out
    jobs = {str(Path(j["output_dir"])): j for j in discover(ws)}
    todo = [(ws.runs_root, 0)]
    while todo:
        d, level = todo.pop()
        for p in sorted(d.iterdir()):
            if not p.is_dir() or p.name.startswith(".") or ".old-" in p.name:
                continue
            if (p / runs.MANIFEST).is_file() and (m := runs.read_manifest(p)) is not None:
                out.append(_run_row(ws, p, m, "complete", jobs.get(str(p))))
            elif p.name.endswith(".partial"):
                target = runs.output_of(p)
                job = jobs.get(str(target))
                state = "running" if runs.is_locked_by_other(target) or (job and job["state"] == "running") else \
                    "failed" if job and job["state"] == "failed" else "partial"
                mark = runs._read_json(p / runs.STAGING_MARK) or {}
                out.append({"run": _rel_root(ws, target), "path": str(target), "stage": mark.get("stage", "?"), "status": state,
                            "inputs": "", "metrics": "", "wall_time": "", "finished": ""})
            elif level + 1 < depth:
                todo.append((p, level + 1))
    return sorted(out, key=lambda r: r["run"])


def _rel_root(ws: Workspace, p: Path) -> str:
    try:
        return str(Path(p).relative_to(ws.runs_root))
    except ValueError:
        return str(p)


def _run_row(ws: Workspace, p: Path, m: dict[str, Any], status: str, job: dict[str, Any] | None) -> dict[str, Any]:
    from llmkit.pipeline import summary_text
    from llmkit.stages import manifest_summary

    inputs = m.get("inputs") or {}
    shown_inputs = ", ".join(f"{k}: {_short(v)}" for k, v in inputs.items() if isinstance(v, str))[:200]
    key = ", ".join(summary_text(r) for r in manifest_summary(m))
    wall = m.get("wall_time_s")
    return {"run": _rel_root(ws, p), "path": str(p), "stage": m.get("stage", "?"), "status": status, "inputs": shown_inputs,
            "metrics": key, "wall_time": f"{wall:.0f} s" if isinstance(wall, (int, float)) else "",
            "finished": m.get("finished_at", "")}


def _short(v: str) -> str:
    return v if len(v) < 60 else "…" + v[-57:]


def run_pictures(path: str | Path) -> list[str]:
    return sorted(str(p) for p in Path(path).glob("*.png"))


def run_samples(path: str | Path, n: int = 5) -> list[dict[str, Any]]:
    f = Path(path) / "samples.jsonl"
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text(encoding="utf-8").splitlines()[:n]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def chain_states(ws: Workspace, recipe: str) -> list[dict[str, str]]:
    """The recipe's stages in order with their state (complete, running, partial, failed, stopped, -)."""
    rows = []
    jobs = {str(Path(j["output_dir"])): j for j in discover(ws)}
    for s in recipe_stages(ws, recipe):
        try:
            out = ws.path(ws.relocate(read_yaml(s["config"]).get("output_dir") or ""))
        except LlmkitError:
            rows.append({"name": s["name"], "state": "unreadable", "path": ""})
            continue
        job = jobs.get(str(out))
        if runs.read_manifest(out) is not None:
            state = "complete"
        elif runs.is_locked_by_other(out) or (job and job["state"] == "running"):
            state = "running"
        elif job and job["state"] in ("failed", "stopped"):
            state = job["state"]
        elif runs.staging_path(out).exists():
            state = "partial"
        else:
            state = "-"
        rows.append({"name": s["name"], "state": state, "path": str(out)})
    return rows


def eval_commands(ws: Workspace, chosen: list[str] | None, tasks: str, limit: Any, engine: str) -> list[list[str]]:
    """One `llmkit eval RUN --tasks ... --engine ... [--limit N]` per chosen run (results go to
    `<run's parent>/eval/<run>`, inside the runs root like the run)."""
    if not chosen:
        raise LlmkitError("choose at least one run to evaluate")
    if not tasks:
        raise LlmkitError("choose a task group (es, es_llm, es_beto, ...)")
    commands = []
    for run in chosen:
        if not ws.inside(run):
            raise LlmkitError(f"{run} is outside {ws.runs_root}; the page evaluates the runs under it")
        argv = ["eval", str(run), "--tasks", tasks, "--engine", engine]
        if limit:
            argv += ["--limit", str(int(limit)) if float(limit) >= 1 else str(limit)]
        commands.append(argv)
    return commands


def eval_outputs(chosen: list[str]) -> list[Path]:
    """Where `llmkit eval RUN` writes each run's results (its default output_dir), each checked
    as the command checks it: an earlier evaluation there is refused with the command's message."""
    from llmkit.evaluation.runner import default_output_dir

    outs = [default_output_dir(str(run)) for run in chosen]
    for out in outs:
        runs.check_output_dir(out, overwrite=False)
    return outs


CHAIN_STAGE_LINE = re.compile(r"^===== llmkit run: (\S+) ", re.M)


def chain_current(ws: Workspace, recipe: str, log: str) -> Path | None:
    """The output directory of the stage `llmkit run` is on (its last `===== llmkit run: NAME` line)."""
    names = CHAIN_STAGE_LINE.findall(log)
    if not names:
        return None
    for s in chain_states(ws, recipe):
        if s["name"] == names[-1] and s["path"]:
            return Path(s["path"])
    return None


def model_runs(ws: Workspace) -> list[str]:
    """Finished runs that hold a model to chat with, evaluate or serve (not tokenizer/reward)."""
    return [r["path"] for r in find_runs(ws) if r["status"] == "complete" and r["stage"] not in ("tokenizer", "reward", "eval")]


def eval_results(ws: Workspace) -> list[str]:
    """Finished evaluations (results.json) under the runs root."""
    return sorted(str(p.parent) for p in ws.runs_root.rglob("results.json") if ".partial" not in str(p)) \
        if ws.runs_root.is_dir() else []
