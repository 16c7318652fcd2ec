"""Run directories: staging, manifests, metric logs and plots.

Every stage writes into ``<output_dir>.partial/`` while it works (checkpoints included) and
only at the very end writes ``manifest.json`` and renames the staging directory to
``<output_dir>``.  So a directory named like a run is always a finished run; a crash leaves a
``.partial`` directory that later stages refuse and that a re-run of the same config resumes.
A finished run is replaced only with ``--overwrite``; a directory that is not an llmkit run is
never written into.  A finalize() killed half way (between its renames) is finished or undone
by ``recover`` the next time anything opens that output directory.

While a stage writes a run, its main process holds ``<output_dir>.lock`` (a file next to the
run, never inside it: an exclusive ``flock`` plus who holds it: pid, host, command, start
time).  A second stage on the same output_dir is refused naming the holder; the lock of a
process that died without releasing it (SIGKILL, power loss) is free again for flock and is
taken over.  Only the main process of a distributed launch locks; the other ranks never look.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime as _dt
import errno
import glob
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmkit.config import LlmkitError, StageConfig, to_plain

MANIFEST = "manifest.json"
STAGING_MARK = "llmkit_partial.json"
LIBS = ("llmkit", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes")


def distributed_state():
    """accelerate's process state, created the way the Trainer will create it (``cpu=True``
    without CUDA, so that several CPU processes join one gloo group instead of each believing
    it is alone)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return distributed_state().is_main_process


def wait_for_everyone() -> None:
    distributed_state().wait_for_everyone()


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("status") == "complete" else None


def staging_path(output_dir: str | Path) -> Path:
    p = Path(output_dir)
    if p.name in ("", ".", ".."):  # "." or "runs/..": name the directory itself
        p = p.resolve()
    if not p.name:
        raise LlmkitError(f"{output_dir} cannot hold a run: choose a directory below it")
    return p.with_name(p.name + ".partial")


def _rank_zero() -> bool:
    """The main process of a distributed launch (torchrun/accelerate set RANK), read from the
    environment so that checking an input run never starts a process group."""
    return os.environ.get("RANK", "0") == "0"


# --------------------------------------------------------------------------- the run lock

LOCK_SUFFIX = ".lock"
_HELD: dict[str, tuple[int, int]] = {}  # lock file -> (fd, pid) of the locks this process holds


def output_of(staging: str | Path) -> Path:
    """The output_dir whose staging directory is ``staging`` (``<out>.partial`` -> ``<out>``)."""
    p = Path(staging)
    return p.with_name(p.name.removesuffix(".partial"))


def lock_path(output_dir: str | Path) -> Path:
    """``<output_dir>.lock``: next to the run (and its ``.partial``), never inside it."""
    staging = staging_path(output_dir)
    return staging.with_name(staging.name[: -len(".partial")] + LOCK_SUFFIX)


def _lock_key(lock: Path) -> str:
    return str(lock.parent.resolve() / lock.name)


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    head = Path(argv[0]).name
    argv[0] = "python -m llmkit" if head == "__main__.py" else head
    cmd = " ".join([argv[0], *(shlex.quote(a) for a in argv[1:])])
    return cmd if len(cmd) <= 300 else cmd[:297] + "..."


def pid_alive(pid: Any) -> bool:
    """Whether ``pid`` is a running process on this host (a zombie, killed but not yet reaped
    by its parent, counts as dead)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written its details yet)"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started_at', '?')} "
            f"(command: {info.get('command', '?')})")


def _read_fd(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 16).decode("utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_fd(fd: int, info: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode("utf-8"))


def _refuse(output_dir: str | Path, lock: Path, info: dict[str, Any] | None, hint: str = "") -> LlmkitError:
    return LlmkitError(
        f"output_dir {output_dir} is being written by another llmkit process: {_holder(info)}. "
        f"Wait for it to finish or stop it, or choose another output_dir{hint}"
    )


def _take(lock: Path, output_dir: str | Path, info: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """Lock ``lock`` for this process: (its fd, what a dead holder had written or None)."""
    import fcntl

    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LlmkitError(f"cannot create the run lock {lock}: {exc.strerror}; is its directory writable?") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_fd(fd)
            for _ in range(20):  # the holder writes its details just after locking
                if holder:
                    break
                time.sleep(0.05)
                holder = _read_fd(fd)
            os.close(fd)
            raise _refuse(output_dir, lock, holder) from None
        except OSError as exc:  # a filesystem without flock
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return _take_exclusive(lock, output_dir, info)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder released (removed) it between our open and our flock: again
            os.close(fd)
            continue
        previous = _read_fd(fd)
        _write_fd(fd, info)
        return fd, previous
    raise LlmkitError(f"could not take the run lock {lock}: it keeps being replaced")  # pragma: no cover


def _take_exclusive(lock: Path, output_dir: str | Path, info: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """Without flock: create the lock file exclusively; one naming a pid that is not alive on
    this host is stale and taken over.  A holder on another host cannot be checked."""
    previous = None
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_json(lock)
            if holder and holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
                lock.unlink(missing_ok=True)
                previous = holder
                continue
            raise _refuse(output_dir, lock, holder, f" (if that process is gone, delete {lock})") from None
        _write_fd(fd, info)
        return fd, previous
    raise LlmkitError(f"could not take the run lock {lock}: it keeps being re-created")  # pragma: no cover


def acquire_lock(output_dir: str | Path) -> bool:
    """Hold the lock of ``output_dir`` for this process (the main process only; other ranks do
    nothing).  Refuses, naming the holder, when another live process holds it; takes over the
    lock of a process that died holding it.  Returns True when newly taken, False when this
    process already held it (or is not the main process)."""
    if not _rank_zero():
        return False
    lock = lock_path(output_dir)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = _lock_key(lock)
    if key in _HELD:
        return False
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "started_at": now(),
            "output_dir": str(output_dir)}
    fd, previous = _take(lock, output_dir, info)
    _HELD[key] = (fd, os.getpid())
    if previous and previous.get("pid") != os.getpid():
        state = "no longer running" if previous.get("host") != socket.gethostname() or not pid_alive(previous.get("pid")) \
            else "no longer holding it"
        print(f"llmkit: taking over the lock of {output_dir} left by {_holder(previous)}, {state}", flush=True)
    return True


def release_lock(output_dir: str | Path) -> None:
    """Give up this process's lock of ``output_dir`` (and remove the lock file); no-op when not held."""
    lock = lock_path(output_dir)
    held = _HELD.pop(_lock_key(lock), None)
    if held is None:
        return
    fd, _ = held
    try:
        if os.stat(lock).st_ino == os.fstat(fd).st_ino:
            lock.unlink()
    except OSError:
        pass
    os.close(fd)


def release_locks() -> None:
    """Give up every run lock this process holds (at exit, or after a stage failed)."""
    for key, (fd, pid) in list(_HELD.items()):
        if pid != os.getpid():  # inherited by a forked child: the parent's to release
            continue
        _HELD.pop(key, None)
        try:
            if os.stat(key).st_ino == os.fstat(fd).st_ino:
                os.unlink(key)
        except OSError:
            pass
        os.close(fd)


atexit.register(release_locks)


def is_locked_by_other(output_dir: str | Path) -> bool:
    """Whether another live process holds the lock of ``output_dir`` (without creating anything)."""
    lock = lock_path(output_dir)
    if not lock.exists() or _lock_key(lock) in _HELD:
        return False
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:  # no flock here: the pid it names
        holder = _read_json(lock)
        return bool(holder) and (holder.get("host") != socket.gethostname() or pid_alive(holder.get("pid")))
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(output_dir: str | Path):
    """Hold the lock of ``output_dir`` for the body (kept when this process already held it)."""
    took = acquire_lock(output_dir)
    try:
        yield
    finally:
        if took:
            release_lock(output_dir)


def _replaced_runs(out: Path) -> list[Path]:
    """The ``<out>.old-<time>`` directories finalize() leaves while it replaces a run, oldest first."""
    if not out.parent.is_dir():
        return []
    pattern = re.compile(re.escape(out.name) + r"\.old-(\d+)")
    found = [(int(m.group(1)), p) for p in out.parent.glob(glob.escape(out.name) + ".old-*")
             if (m := pattern.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _finalized(staging: Path) -> bool:
    """A staging directory finalize() completed: its manifest is written and agrees with the
    staging mark (same stage and config) that finalize() removes only after the rename."""
    manifest, mark = read_manifest(staging), _read_json(staging / STAGING_MARK)
    return bool(manifest and isinstance(mark, dict)
                and (manifest.get("stage"), manifest.get("config_hash")) == (mark.get("stage"), mark.get("config_hash")))


def recover(output_dir: str | Path) -> None:
    """Finish or undo a finalize() that was killed between its renames; never lose a finished run.

    finalize() writes the manifest into ``<out>.partial``, moves a finished run it replaces
    (``--overwrite``) to ``<out>.old-<time>``, moves the staging directory to ``<out>`` and
    deletes the old run.  What a kill leaves, and what happens here:

    * ``<out>`` holds a finished run: any ``<out>.old-*`` is the run it replaced; deleted.
    * ``<out>`` is missing and ``<out>.partial`` holds its manifest (next to its staging mark):
      that run was complete; it is moved into place (the ``.old-*`` then goes as above).
    * ``<out>`` is missing otherwise: the newest finished ``<out>.old-*`` is moved back.

    Called before a run directory is checked (check_output_dir, require_run, `llmkit run`);
    only the main process moves anything."""
    out = Path(output_dir)
    if not _rank_zero() or not out.name or out.name in (".", ".."):
        return
    if is_locked_by_other(out):  # its writer is alive (maybe inside finalize): not ours to touch
        return
    staging = staging_path(out)
    with contextlib.suppress(FileNotFoundError, FileExistsError):  # another process recovered it first
        _recover(out, staging)


def _recover(out: Path, staging: Path) -> None:
    if not out.exists():
        old = [p for p in _replaced_runs(out) if read_manifest(p) is not None]
        if _finalized(staging):
            staging.rename(out)
            print(f"llmkit: {staging} was a finished run stopped while moving into place: moved to {out}", flush=True)
        elif old:
            old[-1].rename(out)
            print(f"llmkit: the run replaced with --overwrite was stopped half way; restored the previous run {old[-1]} to {out}",
                  flush=True)
    if out.is_dir() and read_manifest(out) is not None:
        (out / STAGING_MARK).unlink(missing_ok=True)
        for p in _replaced_runs(out):
            shutil.rmtree(p, ignore_errors=True)


def check_output_dir(output_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, to write where a finished run or foreign files live, or where
    another llmkit process is writing right now (named: pid, host, command, start time).

    The lock is held (briefly, or kept when this process already holds it) while a finalize()
    killed half way is recovered; nothing is left behind by a check."""
    out = Path(output_dir)
    staging_path(out)  # refuses "/" before anything else
    if not (_rank_zero() and out.parent.is_dir()):  # no parent yet: nobody can be writing there
        recover(out)
        _check_output_dir(out, overwrite)
        return
    with locked(out):
        recover(out)
        _check_output_dir(out, overwrite)


def _check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise LlmkitError(f"output_dir {out} exists and is a file; choose another output_dir")
        manifest = read_manifest(out)
        if manifest is not None:
            if not overwrite:
                raise LlmkitError(
                    f"output_dir {out} already holds a finished '{manifest.get('stage')}' run "
                    f"(finished {manifest.get('finished_at', '?')}). Pass --overwrite to replace it, "
                    "or choose another output_dir."
                )
        elif any(out.iterdir()):
            raise LlmkitError(
                f"output_dir {out} is not empty and is not an llmkit run; llmkit will not write into it. "
                "Choose another output_dir or empty it yourself."
            )


def open_staging(output_dir: str | Path, cfg: StageConfig, stage: str, overwrite: bool) -> Path:
    """Take the run's lock (main process; held until finalize(), or released when the stage
    fails or is interrupted), then create (or reuse, to resume) the staging directory of a
    run; returns its path."""
    staging = staging_path(output_dir)
    acquire_lock(output_dir)
    try:
        return _open_staging(output_dir, staging, cfg, stage, overwrite)
    except BaseException:
        release_lock(output_dir)
        raise


def _open_staging(output_dir: str | Path, staging: Path, cfg: StageConfig, stage: str, overwrite: bool) -> Path:
    check_output_dir(output_dir, overwrite)
    if is_main_process():
        mark = staging / STAGING_MARK
        if staging.exists():
            old = _read_json(mark)
            if old is None or old.get("config_hash") != cfg.hash() or old.get("stage") != stage:
                if not overwrite:
                    raise LlmkitError(
                        f"{staging} holds an unfinished run with a different config. Pass --overwrite to "
                        "discard it, or run again with the config it was started with to resume it."
                    )
                shutil.rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
        if not mark.exists():
            _write_json(mark, {"stage": stage, "config_hash": cfg.hash(), "started_at": now()})
        write_configs(staging, cfg)
    wait_for_everyone()
    return staging


# Config keys that make a library write files.  transformers 5.19+ has no logging_dir (older
# versions: TensorBoard's directory); any other *_dir key but output_dir is treated the same.
WRITE_KEYS = ("logging_dir",)
# from_pretrained arguments in TRL's model_init_kwargs that write (download cache, offloaded weights).
WRITE_KWARGS = ("cache_dir", "offload_folder")


def confine_write_paths(cfg: StageConfig, output_dir: str | Path) -> None:
    """Config values that make a stage write files must point inside the run's output directory.

    A path inside ``output_dir`` is redirected to the same place in ``<output_dir>.partial``
    (where the run is written until it finishes, like its checkpoints); a path inside the
    staging directory is kept; any other path (another directory, ``..``, a symlink leading
    out) is refused.  Relative paths are read from the current directory, as the libraries do."""
    out = Path(output_dir).expanduser().resolve()
    staging = staging_path(out)

    def inside(key: str, value: Any) -> Any:
        if not isinstance(value, (str, Path)) or not str(value):
            return value
        p = Path(value).expanduser().resolve()
        if p == staging or staging in p.parents:
            return value
        if p == out or out in p.parents:
            return str(staging / p.relative_to(out))
        raise LlmkitError(
            f"{cfg.source}: {key}={str(value)!r} would write outside the run's output directory {out}; "
            f"point it inside output_dir (e.g. {out / Path(str(value)).name}) or remove the key"
        )

    for args in cfg.args:
        if not dataclasses.is_dataclass(args):
            continue
        for f in dataclasses.fields(args):
            value = getattr(args, f.name, None)
            if f.name != "output_dir" and (f.name in WRITE_KEYS or f.name.endswith("_dir")):
                setattr(args, f.name, inside(f.name, value))
            elif f.name == "model_init_kwargs" and isinstance(value, dict):
                for k in WRITE_KWARGS:
                    if k in value:
                        value[k] = inside(f"model_init_kwargs.{k}", value[k])


SECRET_KEYS = {"hub_token", "push_to_hub_token", "token", "api_key", "hub_private_repo_token"}


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """Credentials never reach a file: their values are replaced by '<redacted>'."""
    return {k: ("<redacted>" if k in SECRET_KEYS and v else v) for k, v in config.items()}


def write_configs(directory: Path, cfg: StageConfig) -> None:
    import yaml

    (directory / "config.yaml").write_text(yaml.safe_dump(redact(to_plain(cfg.as_written())), sort_keys=False, allow_unicode=True))
    (directory / "config_resolved.yaml").write_text(
        yaml.safe_dump(redact(cfg.resolved()), sort_keys=True, allow_unicode=True, default_flow_style=False)
    )


def finalize(staging: Path, output_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the manifest last, then atomically move the staging dir into place.

    Killed at any point, this leaves ``<out>.partial`` (still marked as this config's
    unfinished run, so the same command resumes it), the finished ``<out>``, or (killed
    between the renames of an --overwrite, or before the staging dir moved) a state that
    ``recover`` finishes or undoes on the next start."""
    out = Path(output_dir)
    if is_main_process():
        old = None
        try:
            _write_json(staging / MANIFEST, manifest)
            if out.exists():  # --overwrite of a finished run: keep it until the new one is in place (see recover)
                old = out.with_name(f"{out.name}.old-{time.time_ns()}")
                out.rename(old)
            staging.rename(out)
            (out / STAGING_MARK).unlink(missing_ok=True)
        finally:
            release_lock(out)  # the run is in place (or left for recover): deleting the old one needs no lock
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    wait_for_everyone()
    return out


def build_manifest(
    stage: str,
    cfg: StageConfig,
    started: float,
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    steps: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "status": "complete",
        "config_hash": cfg.hash(),
        "finished_at": now(),
        "wall_time_s": round(time.time() - started, 2),
        "steps": steps,
        "inputs": to_plain(inputs),
        "upstream": upstream_runs(inputs),
        "metrics": to_plain(metrics),
        "versions": versions(),
        "git_revision": git_revision(),
        "host": {"python": platform.python_version(), "platform": platform.platform(), "device": device_name()},
        **(extra or {}),
    }


def upstream_runs(inputs: Any) -> dict[str, str]:
    """{run directory: its finished_at} for every llmkit run named among a stage's inputs, so
    that `llmkit run` can tell when an input was re-made after this run used it."""
    found: dict[str, str] = {}

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, (str, Path)) and str(v) and Path(v).is_dir():
            m = read_manifest(v)
            if m:
                found[str(Path(v))] = m.get("finished_at", "")

    walk(inputs)
    return found


def require_run(path: str | Path, what: str) -> dict[str, Any] | None:
    """Check a path used as a stage input. Returns the manifest for llmkit runs, None for
    plain HF directories and hub ids. Unfinished runs are refused."""
    p = Path(path)
    staging = staging_path(p)
    recover(p)
    if not p.exists():
        if staging.exists():
            raise LlmkitError(
                f"{what} {p} did not finish (only {staging} exists). Run that stage again to resume it."
            )
        if _looks_like_local_path(str(path)):
            raise LlmkitError(f"{what} not found: {p}")
        return None  # a hub id; the library will resolve it
    if not p.is_dir():
        raise LlmkitError(f"{what} {p} is a file, expected a directory")
    manifest = read_manifest(p)
    if manifest is None and (p / MANIFEST).exists():
        raise LlmkitError(f"{what} {p} has an unreadable or incomplete manifest.json; run its stage again")
    return manifest


def _looks_like_local_path(s: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else, or an ``org`` that is a local
    directory (``runs/x``), is a local path."""
    if s.startswith((".", "/", "~")) or s.endswith("/") or s.count("/") > 1:
        return True
    return s.count("/") == 1 and Path(s.split("/")[0]).is_dir()


def cache_dir() -> Path:
    """Where llmkit keeps caches (merged copies, exports, server logs): $LLMKIT_CACHE_DIR or ./.cache/llmkit."""
    return Path(os.environ.get("LLMKIT_CACHE_DIR", Path.cwd() / ".cache" / "llmkit")).resolve()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for lib in LIBS:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = None
    return out


def git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not rev:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except Exception:
        pass
    return f"cpu ({os.cpu_count()} cores)"


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- metrics and plots


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut short by a killed run is skipped."""
    f = Path(path)
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_curves(metrics_file: str | Path, png: str | Path, keys: tuple[str, ...] = ("loss", "eval_loss"), title: str = "") -> bool:
    """Plot the given keys of a metrics.jsonl against step; returns False when nothing to plot."""
    rows = read_metrics(metrics_file)
    series = {k: [(r["step"], r[k]) for r in rows if k in r and r.get(k) is not None] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for k, pts in series.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=k)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


def _say(line: str) -> None:
    """Print a line on stdout above any tqdm bar (which is redrawn under it)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def make_metrics_callback(metrics_file: str | Path):
    """A TrainerCallback that appends every log to metrics.jsonl and prints one line per
    training log step (step, loss, learning rate, tokens/s, ETA) and one per evaluation
    (main process only).  common.build_trainer stops transformers printing the raw dict."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = time.time()
            self.last_t = self.t0
            self.last_tokens = 0
            self.start_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = self.last_t = time.time()
            self.start_step = state.global_step
            self.last_tokens = state.num_input_tokens_seen or 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            t = time.time()
            row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time_s": round(t - self.t0, 2)}
            row.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
            tokens = state.num_input_tokens_seen or 0
            if tokens and t > self.last_t and tokens > self.last_tokens:
                row["tokens_per_s"] = round((tokens - self.last_tokens) / (t - self.last_t), 1)
            with open(metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            if "loss" in logs and state.max_steps:
                done = max(state.global_step - self.start_step, 1)
                eta = (t - self.t0) / done * (state.max_steps - state.global_step)
                lr = f" | lr {logs['learning_rate']:.2e}" if isinstance(logs.get("learning_rate"), (int, float)) else ""
                tps = f" | {row['tokens_per_s']:.0f} tok/s" if "tokens_per_s" in row else ""
                _say(f"[step {state.global_step}/{state.max_steps}] loss {logs['loss']:.4f}{lr}{tps} | ETA {eta:.0f}s")
            elif isinstance(logs.get("eval_loss"), (int, float)) and state.max_steps:
                _say(f"[step {state.global_step}/{state.max_steps}] eval_loss {logs['eval_loss']:.4f}")
            self.last_t = t
            self.last_tokens = tokens

    return MetricsCallback()
