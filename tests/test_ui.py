"""The page's logic without a browser (llmkit/ui/jobs.py): the command a start runs, the checks
and their messages, child processes (start, record, find again, stop), logs, progress, curves,
run discovery; the login rule; every label in both languages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit.config import LlmkitError
from llmkit.ui import jobs
from llmkit.ui.command import check_auth
from llmkit.ui.i18n import LABELS, t

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = (REPO / "recipes/tiny-es/pretrain.yaml").read_text(encoding="utf-8")


@pytest.fixture
def ws(tmp_path) -> jobs.Workspace:
    return jobs.Workspace(REPO, tmp_path / "runs")


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def cli_error(capsys, *argv: str) -> str:
    from llmkit.cli import main

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert main(list(argv)) == 2
    finally:
        os.chdir(cwd)
    return capsys.readouterr().err.strip()


# ----------------------------------------------------------------------------- the command


def test_plan_is_the_command_a_user_types(tmp_path):
    plan = jobs.build_plan(jobs.Workspace(REPO), "tiny-es", "sft")
    assert plan.command() == "llmkit sft --config recipes/tiny-es/sft.yaml"
    assert plan.output_dir == REPO / "runs/tiny-es/sft" and plan.stage == "sft"
    whole = jobs.build_plan(jobs.Workspace(REPO), "tiny-es", jobs.WHOLE_CHAIN)
    assert whole.command() == "llmkit run recipes/tiny-es"


def test_plan_moves_runs_paths_to_the_runs_root_and_passes_edits_as_overrides(ws):
    plan = jobs.build_plan(ws, "tiny-es", "pretrain")
    root = ws.runs_root
    assert plan.argv == ["pretrain", "--config", "recipes/tiny-es/pretrain.yaml", "--output_dir", f"{root}/tiny-es/pretrain",
                         "--tokenizer_name_or_path", f"{root}/tiny-es/tokenizer"]
    edited = PRETRAIN.replace("learning_rate: 3.0e-3", "learning_rate: 1.0e-4") + "max_steps: 5\nuse_peft: false\n"
    plan = jobs.build_plan(ws, "tiny-es", "pretrain", edited)
    tail = plan.argv[7:]
    assert tail == ["--learning_rate", "0.0001", "--max_steps", "5", "--use_peft", "false"]
    edited = PRETRAIN.replace("datasets:\n  - data/corpus_train.jsonl", "datasets: [data/a.jsonl, data/b.jsonl]")
    assert jobs.build_plan(ws, "tiny-es", "pretrain", edited).argv[-2:] == ["--datasets", "[data/a.jsonl, data/b.jsonl]"]


def test_plan_refuses_what_a_command_cannot_say(ws):
    with pytest.raises(LlmkitError, match="key 'seed' was removed in the editor"):
        jobs.build_plan(ws, "tiny-es", "pretrain", PRETRAIN.replace("seed: 42\n", ""))
    with pytest.raises(LlmkitError, match="start the stages one by one"):
        jobs.build_plan(ws, "tiny-es", jobs.WHOLE_CHAIN)
    with pytest.raises(LlmkitError, match="no stage 'nope'"):
        jobs.build_plan(ws, "tiny-es", "nope")


# ----------------------------------------------------------------------------- checks before a start


def test_bad_values_get_llmkits_own_message_and_nothing_is_written(ws, capsys):
    before = snapshot(ws.runs_root)
    plan = jobs.build_plan(ws, "tiny-es", "pretrain", PRETRAIN.replace("learning_rate: 3.0e-3", "learning_rate: mucho"))
    with pytest.raises(LlmkitError) as bad:
        jobs.validate(ws, plan)
    # the same line `llmkit pretrain --learning_rate mucho` prints
    assert f"llmkit: error: {bad.value}" == cli_error(capsys, "pretrain", "--config", "recipes/tiny-es/pretrain.yaml",
                                                      "--learning_rate", "mucho")
    with pytest.raises(LlmkitError, match=r"recipes/tiny-es/pretrain.yaml \(edited\): YAML syntax error at line 19, column 28"):
        jobs.build_plan(ws, "tiny-es", "pretrain", PRETRAIN.replace("block_size: 256", "block_size: [256,"))
    with pytest.raises(LlmkitError, match="key 'seed' appears twice"):
        jobs.build_plan(ws, "tiny-es", "pretrain", PRETRAIN + "seed: 1\n")
    with pytest.raises(LlmkitError, match="unknown key 'learning_rat'. Did you mean: learning_rate"):
        jobs.validate(ws, jobs.build_plan(ws, "tiny-es", "pretrain", PRETRAIN + "learning_rat: 1\n"))
    assert snapshot(ws.runs_root) == before == []
    assert not list((REPO / ".cache/llmkit/ui").glob("*")) if (REPO / ".cache/llmkit/ui").is_dir() else True


def test_missing_inputs_and_places_outside_the_runs_root_are_refused(ws):
    missing = PRETRAIN.replace("  - data/corpus_train.jsonl", "  - data/no_existe.jsonl")
    with pytest.raises(LlmkitError, match="^dataset file not found: data/no_existe.jsonl$"):
        jobs.validate(ws, jobs.build_plan(ws, "tiny-es", "pretrain", missing))
    # the tokenizer run it reads does not exist under this runs root
    with pytest.raises(LlmkitError, match="tokenizer_name_or_path not found"):
        jobs.validate(ws, jobs.build_plan(ws, "tiny-es", "pretrain"))
    outside = PRETRAIN.replace("output_dir: runs/tiny-es/pretrain", "output_dir: /tmp/elsewhere/pretrain")
    with pytest.raises(LlmkitError, match="is outside .* the only place this page writes"):
        jobs.validate(ws, jobs.build_plan(ws, "tiny-es", "pretrain", outside))
    assert snapshot(ws.runs_root) == []


def test_a_second_writer_is_refused_and_found(ws, tmp_path):
    out = ws.runs_root / "tiny-es/pretrain"
    holder = subprocess.Popen([sys.executable, "-c", f"from llmkit import runs; import time; runs.acquire_lock({str(out)!r}); "
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LlmkitError, match="is being written by another llmkit process .*pid"):
            jobs.validate(ws, jobs.build_plan(ws, "tiny-es", "pretrain"))
        found = [j for j in jobs.discover(ws) if j["output_dir"] == str(out)]
        assert found and found[0]["state"] == "running" and found[0]["external"]
    finally:
        holder.kill()
        holder.wait()
    assert not [j for j in jobs.discover(ws) if j["output_dir"] == str(out)]


# ----------------------------------------------------------------------------- child processes


def test_jobs_record_their_exit_status_and_log(ws):
    out = ws.runs_root / "demo" / "ls"
    job = jobs.start(ws, [["ls", "recipes"]], out)
    assert job["pid"] and job["command"] == "llmkit ls recipes"
    done = jobs.wait(out, timeout=120)
    assert done["rc"] == 0 and jobs.job_state(done) == "finished"
    assert "tiny-es" in jobs.tail(done["log"])
    bad = jobs.start(ws, [["tokenizer", "--config", "no/such.yaml"], ["ls", "recipes"]], out, "bad")
    done = jobs.wait(out, "bad", timeout=120)
    assert done["rc"] == 2 and jobs.job_state(done) == "failed"
    log = jobs.tail(bad["log"])
    assert "config file not found: no/such.yaml" in log and "$ llmkit ls" not in log  # the first failure stops the rest
    states = {Path(j["job_file"]).stem: j["state"] for j in jobs.discover(ws)}
    assert states == {"ls": "finished", "bad": "failed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_job_outlives_the_process_that_started_it_and_stop_ends_its_group(ws):
    """Started by a process that then exits (a closed page): found again from its record and
    stopped with SIGTERM to its whole process group."""
    out = ws.runs_root / "long" / "page"
    argv = ["ui", "--port", str(free_port()), "--runs", str(ws.runs_root / "other")]
    code = (f"from pathlib import Path; from llmkit.ui import jobs; ws = jobs.Workspace({str(REPO)!r}, {str(ws.runs_root)!r}); "
            f"print(jobs.start(ws, [{argv!r}], Path({str(out)!r}))['pid'])")
    pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    found = [j for j in jobs.discover(ws) if j["output_dir"] == str(out)]
    assert found and found[0]["state"] == "running" and found[0]["pid"] == pid
    with pytest.raises(LlmkitError, match="still running; stop it first"):
        jobs.start(ws, [["ls"]], out)
    pgid = os.getpgid(pid)
    assert pgid == pid  # its own process group, not the page's
    jobs.stop(out)
    done = jobs.wait(out, timeout=60)
    assert done["rc"] is not None and not jobs.job_alive(done)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pgid, signal.SIGKILL)
        pytest.fail("the job's process group outlived the stop")
    with pytest.raises(LlmkitError, match="nothing is running"):
        jobs.stop(out)


# ----------------------------------------------------------------------------- logs, progress, curves, runs


def test_log_tail_progress_and_curves(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("start\n 10%|#  | 1/10\r 20%|## | 2/10\n[step 2/10] loss 3.0 | lr 1e-3 | ETA 40s\n"
                   "[step 4/10] loss 2.5 | lr 1e-3 | 900 tok/s | ETA 12s\n[step 4/10] eval_loss 2.7\n", encoding="utf-8")
    text = jobs.tail(log)
    assert " 20%|## | 2/10" in text and "1/10" not in text
    assert jobs.progress(text) == {"step": 4, "total": 10, "eta_s": None, "fraction": 0.4}
    assert jobs.progress(text.rsplit("\n", 1)[0])["eta_s"] == 12
    assert jobs.progress("nothing yet") is None
    out = tmp_path / "runs" / "r"
    staging = jobs.runs.staging_path(out)
    staging.mkdir(parents=True)
    rows = [{"step": 1, "loss": 3.0, "learning_rate": 0.1}, {"step": 2, "loss": 2.0, "eval_loss": 2.5, "grad_norm": 1.0},
            {"step": 3, "rewards/chosen": 0.5, "objective/kl": 0.01, "epoch": 1}]
    (staging / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo', encoding="utf-8")
    points = {(p["metric"], p["step"]): p["value"] for p in jobs.curve_rows(out)}
    assert points == {("loss", 1): 3.0, ("loss", 2): 2.0, ("eval_loss", 2): 2.5, ("rewards/chosen", 3): 0.5, ("objective/kl", 3): 0.01}


def test_runs_are_found_with_their_state(ws):
    root = ws.runs_root
    done = root / "tiny-es" / "tokenizer"
    done.mkdir(parents=True)
    (done / "manifest.json").write_text(json.dumps({"stage": "tokenizer", "status": "complete", "wall_time_s": 3.2,
                                                     "metrics": {"fertility": 1.4}, "inputs": {"datasets": "data/x.jsonl"},
                                                     "finished_at": "2026-01-01T00:00:00+00:00"}))
    partial = root / "tiny-es" / "pretrain.partial"
    partial.mkdir()
    (partial / "llmkit_partial.json").write_text(json.dumps({"stage": "pretrain", "config_hash": "x"}))
    (root / "tiny-es" / "notes").mkdir()
    rows = {r["run"]: r for r in jobs.find_runs(ws)}
    assert set(rows) == {"tiny-es/tokenizer", "tiny-es/pretrain"}
    assert rows["tiny-es/tokenizer"]["status"] == "complete" and rows["tiny-es/tokenizer"]["wall_time"] == "3 s"
    assert "fertility (tokens per word) 1.4" in rows["tiny-es/tokenizer"]["metrics"]  # the stage's SUMMARY label
    assert rows["tiny-es/pretrain"]["status"] == "partial" and rows["tiny-es/pretrain"]["stage"] == "pretrain"
    chain = {s["name"]: s["state"] for s in jobs.chain_states(ws, "tiny-es")}
    assert chain["tokenizer"] == "complete" and chain["pretrain"] == "partial" and chain["sft"] == "-"
    assert jobs.model_runs(ws) == []  # a tokenizer has no model to chat with


# ----------------------------------------------------------------------------- login and labels


def test_login_is_required_off_this_machine():
    assert check_auth("127.0.0.1", None) is None
    assert check_auth("0.0.0.0", "ana:clave") == ("ana", "clave")
    with pytest.raises(LlmkitError, match="reachable from other machines.*--auth USER:PASSWORD"):
        check_auth("0.0.0.0", None)
    with pytest.raises(LlmkitError, match="--auth must be USER:PASSWORD"):
        check_auth("127.0.0.1", "ana")


def test_every_label_in_both_languages_and_the_page_builds(ws):
    for key, (es, en) in LABELS.items():
        assert es.strip() and en.strip(), key
    assert t("tab_runs", "es") == "Ejecuciones" and t("tab_runs", "en") == "Runs"
    pytest.importorskip("gradio")
    from llmkit.ui.app import build

    for lang in ("es", "en"):
        demo = build(ws, lang)
        labels = {str(getattr(b, attr, None)) for b in demo.blocks.values() for attr in ("label", "value")}
        assert t("tab_recipes", lang) in labels and t("start", lang) in labels and t("prompt", lang) in labels
    with pytest.raises(LlmkitError, match="--lang 'fr'"):
        build(ws, "fr")


def test_eval_commands_and_the_chain_stage_being_run(ws):
    run = str(ws.runs_root / "tiny-es/sft")
    assert jobs.eval_commands(ws, [run], "es_llm", 20.0, "auto") == [["eval", run, "--tasks", "es_llm", "--engine", "auto",
                                                                       "--limit", "20"]]
    assert jobs.eval_commands(ws, [run], "es", 0.5, "vllm")[0][-2:] == ["--limit", "0.5"]
    assert jobs.eval_commands(ws, [run], "es", None, "vllm")[0][-1] == "vllm"
    with pytest.raises(LlmkitError, match="is outside .* the page evaluates the runs under it"):
        jobs.eval_commands(ws, ["/tmp/elsewhere/sft"], "es", 20, "auto")
    with pytest.raises(LlmkitError, match="choose at least one run"):
        jobs.eval_commands(ws, [], "es", 20, "auto")
    log = "\n===== llmkit run: tokenizer (tokenizer, recipes/tiny-es/tokenizer.yaml) =====\n...\n" \
          "===== llmkit run: pretrain (pretrain, recipes/tiny-es/pretrain.yaml) =====\n[step 3/40] loss 7.1\n"
    assert jobs.chain_current(ws, "tiny-es", log) == ws.runs_root / "tiny-es/pretrain"
    assert jobs.chain_current(ws, "tiny-es", "no stage yet") is None


# ----------------------------------------------------------------------------- evaluation and serving, without a browser


def test_eval_and_serve_refuse_bad_input_with_one_line_and_start_nothing(ws):
    pytest.importorskip("gradio")
    from llmkit.ui import app

    ws.runs_root.mkdir(parents=True)
    run = ws.runs_root / "tiny-es" / "pretrain"
    assert app.eval_start(ws, [], "es_llm", 4, "transformers", "es") == "llmkit: error: choose at least one run to evaluate"
    assert app.serve_start(ws, None, 8000, "transformers", "es") == "llmkit: error: choose a run to serve"
    for port in (None, 0, 70000, "x", 80.5):
        assert app.serve_start(ws, str(run), port, "transformers", "es").startswith(f"llmkit: error: port {port!r}: choose")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        message = app.serve_start(ws, str(run), port, "transformers", "es")
    assert message == f"llmkit: error: port {port} on 127.0.0.1 is already in use (Address already in use); pick another with --port"
    assert snapshot(ws.runs_root) == []  # no job record, no log: nothing started
    assert app.serve_status(str(run), "es") == (t("no_server", "es"), "", "")
    assert app.serve_stop(str(run), "es") == f"llmkit: error: nothing is running for {run}"


def test_an_earlier_evaluation_is_refused_before_anything_starts(ws):
    run = ws.runs_root / "tiny-es" / "sft"
    run.mkdir(parents=True)
    assert jobs.eval_outputs([str(run)]) == [ws.runs_root / "tiny-es" / "eval" / "sft"]  # `llmkit eval`'s own default
    done = ws.runs_root / "tiny-es" / "eval" / "sft"
    done.mkdir(parents=True)
    (done / "manifest.json").write_text(json.dumps({"stage": "eval", "status": "complete"}))
    with pytest.raises(LlmkitError, match="already holds a finished 'eval' run"):
        jobs.eval_outputs([str(run)])


def test_a_jobs_extra_keys_are_in_its_record_before_the_child_runs(ws):
    """The port of a server is written with the record, not after the start: the child's own write
    (armed, pid) cannot drop it."""
    out = ws.runs_root / "demo" / "ls"
    job = jobs.start(ws, [["ls", "recipes"]], out, "x", kind="serve", extra={"port": 8123, "engine": "transformers"})
    done = jobs.wait(out, "x", timeout=120)
    assert done["rc"] == 0 and done["port"] == 8123 and done["engine"] == "transformers"
    assert done["pid"] == job["pid"] and done["armed"] is True


def test_the_snippet_is_runnable_python_naming_port_and_model():
    pytest.importorskip("gradio")
    from llmkit.ui.app import client_snippet

    code = client_snippet(8123, "/tmp/runs/tiny-es/sft")
    compile(code, "snippet", "exec")
    assert 'base_url="http://127.0.0.1:8123/v1"' in code and "model='/tmp/runs/tiny-es/sft'" in code


class _FakeServer:
    """An HTTP stand-in for a server's two read-only endpoints: /v1/models and /health."""

    def __init__(self, models: list[dict], health: int):
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                body, code = (json.dumps({"object": "list", "data": outer.models}), 200) if self.path == "/v1/models" else \
                    (json.dumps({"status": "ok"}), outer.health) if self.path == "/health" else ("{}", 404)
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.models, self.health = models, health
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_served_model_name_comes_from_the_server(tmp_path):
    from llmkit.ui.chat import server_model

    run = str(tmp_path / "sft")
    srv = _FakeServer([{"id": "base"}, {"id": "sft", "parent": "base"}], 200)  # vLLM: a LoRA run over its base
    try:
        assert server_model(srv.url, run) == "sft"
        srv.models = [{"id": "pretrain"}]  # llama.cpp, vLLM on a full model
        assert server_model(srv.url, run) == "pretrain"
        srv.models, srv.health = [], 200  # transformers serve: lists the hub cache only, named by its path
        assert server_model(srv.url, run) == run
        srv.health = 503  # ... and is not ready yet
        assert server_model(srv.url, run) is None
    finally:
        srv.close()
    assert server_model(srv.url, run) is None  # nothing answers
