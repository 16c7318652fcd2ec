"""The run lock (llmkit/runs.py): while a stage writes ``<out>.partial`` its main process holds
``<out>.lock``; a second stage on the same output_dir is refused naming the holder, a lock left
by a dead process is taken over, and the lock is gone after success, an error or SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TINY_MODEL, llmkit

from llmkit import runs

ERROR = "llmkit: error:"


def pretrain_argv(out: Path, tokenizer_run: Path, corpus: Path, steps: int = 4) -> list[str]:
    return ["pretrain", "--output_dir", str(out), "--tokenizer_name_or_path", str(tokenizer_run), "--model_config", json.dumps(TINY_MODEL),
            "--datasets", f"[{corpus}]", "--block_size", "64", "--eval_split_size", "0", "--max_steps", str(steps),
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "2"]


def tokenizer_argv(out: Path, corpus: Path) -> list[str]:
    return ["tokenizer", "--output_dir", str(out), "--datasets", f"[{corpus}]", "--vocab_size", "300"]


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(ERROR)]


# A real `llmkit` process that stops at the start of training (lock held, staging open) until
# the file GO exists; with SIGTERM_AT it sends itself SIGTERM at that step instead.
HELD_RUN = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from llmkit.stages import common

    go, sigterm_at = Path(sys.argv[1]), int(sys.argv[2])
    real = common.train

    def train(trainer, staging):
        from transformers import TrainerCallback

        class Term(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == sigterm_at:
                    os.kill(os.getpid(), signal.SIGTERM)

        trainer.add_callback(Term())
        Path(str(go) + ".ready").write_text(str(os.getpid()))
        while sigterm_at == 0 and not go.exists():
            time.sleep(0.1)
        return real(trainer, staging)

    common.train = train
    from llmkit.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def start_held(tmp_path: Path, argv: list[str], sigterm_at: int = 0) -> tuple[subprocess.Popen, Path]:
    go = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HELD_RUN, str(go), str(sigterm_at), *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, go


def wait_ready(proc: subprocess.Popen, go: Path, timeout: float = 300) -> None:
    t0 = time.time()
    while not Path(str(go) + ".ready").exists():
        assert proc.poll() is None, "the first run ended early:\n" + proc.stdout.read()[-3000:]
        assert time.time() - t0 < timeout, "timed out waiting for the first run to start training"
        time.sleep(0.1)


def test_second_run_on_the_same_output_is_refused_naming_the_holder(tmp_path, tokenizer_run, corpus):
    """Two real `llmkit pretrain` processes, same output_dir: the second exits 2 with one error
    line naming the first (pid, host, command, start time) and writes nothing; the first finishes."""
    out = tmp_path / "runs" / "conc"
    argv = pretrain_argv(out, tokenizer_run, corpus)
    first, go = start_held(tmp_path, argv)
    try:
        wait_ready(first, go)
        lock = runs.lock_path(out)
        held = json.loads(lock.read_text())
        assert held["pid"] == first.pid and held["host"] == socket.gethostname() and "pretrain" in held["command"]
        staging_before = sorted(str(p.relative_to(tmp_path)) for p in runs.staging_path(out).rglob("*"))

        second = subprocess.run([sys.executable, "-m", "llmkit", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = error_lines(second.stderr)
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert f"pid {first.pid}" in lines[0] and socket.gethostname() in lines[0], lines[0]
        assert "pretrain" in lines[0] and held["started_at"] in lines[0] and str(out) in lines[0], lines[0]
        assert "resuming" not in second.stdout
        assert sorted(str(p.relative_to(tmp_path)) for p in runs.staging_path(out).rglob("*")) == staging_before
        assert json.loads(lock.read_text()) == held  # the holder's lock is untouched
    finally:
        go.write_text("")
        log = first.communicate(timeout=600)[0]
    assert first.returncode == 0, log[-3000:]
    m = runs.read_manifest(out)
    assert m and m["steps"] == 4
    assert not runs.lock_path(out).exists() and not list(out.rglob("*.lock"))  # released, and never inside the run
    assert sorted(p.name for p in out.parent.iterdir()) == ["conc"]


def test_sigterm_releases_the_lock_and_the_same_command_resumes(tmp_path, tokenizer_run, corpus, capsys):
    out = tmp_path / "runs" / "term"
    argv = pretrain_argv(out, tokenizer_run, corpus, steps=6)
    proc, _ = start_held(tmp_path, argv, sigterm_at=2)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 143, log[-3000:]
    assert "stopped by SIGTERM" in log
    assert runs.staging_path(out).is_dir() and not out.exists()
    assert not runs.lock_path(out).exists()
    capsys.readouterr()
    assert llmkit(*argv) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "taking over" not in printed
    assert runs.read_manifest(out)["steps"] == 6 and not runs.lock_path(out).exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, corpus, capsys):
    out = tmp_path / "runs" / "tok"
    out.parent.mkdir(parents=True)
    pid = _dead_pid()
    assert not runs.pid_alive(pid)
    stale = {"pid": pid, "host": socket.gethostname(), "command": "llmkit tokenizer --config old.yaml",
             "started_at": "2026-01-01T00:00:00+00:00"}
    runs.lock_path(out).write_text(json.dumps(stale))
    assert llmkit(*tokenizer_argv(out, corpus)) == 0
    printed = capsys.readouterr().out
    assert f"taking over the lock of {out} left by pid {pid}" in printed and "no longer running" in printed
    assert runs.read_manifest(out) is not None
    assert sorted(p.name for p in out.parent.iterdir()) == ["tok"]


HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "llmkit tokenizer --config held.yaml",
                             "started_at": "2026-12-01T10:00:00+00:00"}).encode())
    print("held", flush=True)
    time.sleep(600)
""")


def test_live_holder_is_refused_then_its_kill_frees_the_lock(tmp_path, corpus, capsys):
    """A live process holding the lock: refused before anything is written; once it is
    SIGKILLed (its lock file stays behind, naming it) the same command takes the lock over."""
    out = tmp_path / "runs" / "tok"
    out.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(runs.lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert llmkit(*tokenizer_argv(out, corpus)) == 2
        err = capsys.readouterr().err
        lines = error_lines(err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 2026-12-01T10:00:00+00:00" in lines[0]
        assert "llmkit tokenizer --config held.yaml" in lines[0]
        assert sorted(p.name for p in out.parent.iterdir()) == ["tok.lock"]  # no .partial, nothing else
        with pytest.raises(Exception, match="being written by another llmkit process"):
            runs.check_output_dir(out, overwrite=True)  # --overwrite does not override a live writer
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert runs.lock_path(out).exists()  # what a killed holder leaves
    assert llmkit(*tokenizer_argv(out, corpus)) == 0
    assert f"left by pid {holder.pid}" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["tok"]


def test_lock_released_when_the_stage_fails_after_opening_staging(tmp_path, tokenizer_run, corpus, capsys, monkeypatch):
    from transformers import Trainer

    from llmkit.config import LlmkitError

    def boom(self, *a, **k):
        raise LlmkitError("refused half way")

    monkeypatch.setattr(Trainer, "train", boom)
    out = tmp_path / "runs" / "fail"
    assert llmkit(*pretrain_argv(out, tokenizer_run, corpus)) == 2
    assert "refused half way" in capsys.readouterr().err
    assert runs.staging_path(out).is_dir()  # kept, to resume
    assert not runs.lock_path(out).exists() and runs._lock_key(runs.lock_path(out)) not in runs._HELD


def test_other_ranks_neither_take_nor_refuse(tmp_path, monkeypatch):
    """Under a distributed launch only rank 0 locks: rank 1 creates no lock and is not refused
    by rank 0's."""
    out = tmp_path / "runs" / "ddp"
    out.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(runs.lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("RANK", "1")
        runs.check_output_dir(out, overwrite=False)  # not refused
        assert runs.acquire_lock(out) is False and runs._lock_key(runs.lock_path(out)) not in runs._HELD
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(Exception, match=f"pid {holder.pid}"):
            runs.check_output_dir(out, overwrite=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    monkeypatch.setenv("RANK", "1")
    other = tmp_path / "runs" / "fresh"
    assert runs.acquire_lock(other) is False and not runs.lock_path(other).exists()


def test_lock_is_reentrant_and_released_once(tmp_path):
    out = tmp_path / "runs" / "x"
    assert runs.acquire_lock(out) is True
    assert runs.acquire_lock(out) is False  # this process already holds it
    with runs.locked(out):
        runs.check_output_dir(out, overwrite=False)
    assert runs.lock_path(out).exists()  # still held: locked() did not take it
    info = json.loads(runs.lock_path(out).read_text())
    assert info["pid"] == os.getpid() and info["output_dir"] == str(out)
    runs.release_lock(out)
    assert not runs.lock_path(out).exists() and runs._lock_key(runs.lock_path(out)) not in runs._HELD
    runs.release_lock(out)  # a no-op


def test_an_evaluation_into_a_directory_another_process_writes_is_refused(tmp_path, base_model, capsys):
    """`llmkit eval` holds its results directory's lock while it scores; a second one is refused."""
    out = tmp_path / "ev"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from llmkit import runs
        with runs.locked({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = llmkit("eval", base_model, "--tasks", "copa_es", "--engine", "transformers", "--output_dir", out)
        err = capsys.readouterr().err
        assert rc == 2 and len(error_lines(err)) == 1 and f"pid {holder.pid}" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
