"""`llmkit ui` in a real browser: headless Chromium (Debian's package) driven by Playwright.

The page runs as `llmkit ui --runs <tmp>/runs` in its own process.  Through the page: bad input
is refused with llmkit's one-line messages (nothing started, nothing written); a short tiny-es
pretrain starts, its progress and curve move, a second start on the same output is refused,
Stop saves a checkpoint, a reloaded page finds the run, Start resumes it to the end; Runs lists
it; Chat answers from it; the language switch switches the labels.

Evaluación evaluates that run and a second one (a copy with seeded random weights) on es_mmlu
from the offline fixtures (tests/fixtures/eval, $LLMKIT_EVAL_DATA_DIR) and shows `--compare`:
table numbers equal to each run's results.json, and the chart.  Servir starts `llmkit serve`
(transformers) for the random run: running once it answers, the openai snippet it shows runs and
answers with the run's greedy text; Chat then goes through that server (its log counts the
request) with the same greedy text; Stop ends the server's process group and frees the port.
No run chosen, and a port in use, are refused with one line and start nothing.

A screenshot of each tab goes to .cache/ui-test/ (or $LLMKIT_UI_SHOTS)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "eval"
CHROMIUM = os.environ.get("LLMKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = "sudo apt-get install -y --no-install-recommends chromium"

pytestmark = pytest.mark.slow

if not CHROMIUM:
    pytest.skip(f"no Chromium for the browser test of llmkit ui; install it with: {INSTALL}", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: make setup installs it")
pytest.importorskip("gradio", reason="gradio is not installed: make setup installs it (the ui extra)")

# the tiny-es pretrain, made small: a few quick steps, a checkpoint every two
EDITS = {"max_steps": "40", "logging_steps": "1", "save_steps": "2", "per_device_train_batch_size": "8", "block_size": "128",
         "eval_steps": "100", "warmup_steps": "2"}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edited_yaml(edits: dict[str, str]) -> str:
    lines = (REPO / "recipes/tiny-es/pretrain.yaml").read_text(encoding="utf-8").splitlines()
    out, skipping = [], False
    for line in lines:
        key = line.split(":", 1)[0]
        if line.startswith(" ") and skipping:  # the block under a replaced key
            continue
        skipping = key in edits
        out.append(f"{key}: {edits[key]}" if skipping else line)
    present = {line.split(":", 1)[0] for line in lines}
    out += [f"{k}: {v}" for k, v in edits.items() if k not in present]
    return "\n".join(out) + "\n"


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui") / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "GRADIO_ANALYTICS_ENABLED": "False", "LLMKIT_CACHE_DIR": str(root.parent / "cache"),  # server logs, merges
           "LLMKIT_EVAL_DATA_DIR": str(FIXTURES)}  # what the page's evaluations read: offline fixtures
    rc = subprocess.run([sys.executable, "-m", "llmkit", "tokenizer", "--config", "recipes/tiny-es/tokenizer.yaml",
                         "--output_dir", str(root / "tiny-es/tokenizer")], cwd=REPO, env=env, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-2000:]
    port = free_port()
    log = open(root.parent / "ui.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "ui", "--runs", str(root), "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import requests

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root.parent / "ui.log").read_text()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    yield {"url": f"http://127.0.0.1:{port}/", "root": root, "proc": proc, "env": env}
    left = [job["pid"] for f in root.rglob(".ui/*.json") if (job := json.loads(f.read_text())).get("pid") and job.get("rc") is None]
    for sig in (signal.SIGTERM, signal.SIGKILL):  # a job the test left running: SIGTERM first (a server stops its own group)
        for pid in left:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 20
        while sig == signal.SIGTERM and any(group_alive(pid) for pid in left) and time.monotonic() < deadline:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"], headless=True)
        yield b
        b.close()


def shots_dir() -> Path:
    d = Path(os.environ.get("LLMKIT_UI_SHOTS", REPO / ".cache" / "ui-test"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_selector("#ui-recipe")
    return page


def choose(page, elem: str, option: str) -> None:
    page.locator(f"#{elem} input").click()
    page.get_by_role("option", name=option, exact=True).filter(visible=True).first.click()  # an earlier list may linger


def set_yaml(page, text: str) -> None:
    editor = page.locator("#ui-yaml .cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)


def wait_value(page, selector: str, predicate, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    value = ""
    while time.monotonic() < deadline:
        value = page.locator(selector).input_value()
        if predicate(value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"{selector} never matched; last value: {value!r}")


def state(page) -> dict[str, str]:
    el = page.locator("#ui-state")
    return {k: el.get_attribute(f"data-{k}") or "" for k in ("state", "step", "total", "points", "checkpoints")}


def wait_state(page, predicate, timeout: float = 300.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    s: dict[str, str] = {}
    while time.monotonic() < deadline:
        s = state(page)
        if predicate(s):
            return s
        time.sleep(0.5)
    log = page.locator("#ui-log textarea").input_value()[-1500:]
    raise AssertionError(f"the run never reached the expected state; last: {s}; log: {log}")


def press_and_read(page, button: str, previous: str) -> str:
    page.locator(f"#{button}").click()
    return wait_value(page, "#ui-message textarea", lambda v: v and v != previous)


def test_page_trains_stops_resumes_chats_and_switches_language(page_server, browser):
    root, shots = page_server["root"], shots_dir()
    page = open_page(browser, page_server["url"])
    choose(page, "ui-stage", "pretrain")
    command = wait_value(page, "#ui-command textarea", lambda v: v.startswith("llmkit pretrain"))
    # the command a user would type: the recipe's YAML, its runs/ paths moved under the page's runs root
    assert command.startswith("llmkit pretrain --config recipes/tiny-es/pretrain.yaml")
    assert f"--output_dir {root}/tiny-es/pretrain" in command and f"--tokenizer_name_or_path {root}/tiny-es/tokenizer" in command
    page.wait_for_function("parseInt(document.querySelector('#ui-keys [role=grid]').getAttribute('aria-rowcount')) > 50")  # every key
    assert "learning_rate" in page.locator("#ui-keys").inner_text()
    page.screenshot(path=str(shots / "recetas.png"), full_page=True)

    # ---- bad input: llmkit's one-line message, nothing started, nothing written
    before = snapshot(root)
    message = ""
    for edits, expected in (({"learning_rate": "mucho"}, "learning_rate"),
                            ({"block_size": "[1,"}, "YAML syntax error"),
                            ({"datasets": "[data/no_existe.jsonl]"}, "dataset file not found: data/no_existe.jsonl")):
        set_yaml(page, edited_yaml({**EDITS, **edits}))
        message = press_and_read(page, "ui-start", message)
        assert message.startswith("llmkit: error:") and expected in message and "\n" not in message, message
        assert snapshot(root) == before
    # ---- a short run: progress and curve move
    set_yaml(page, edited_yaml(EDITS))
    command = wait_value(page, "#ui-command textarea", lambda v: "--max_steps 40" in v)
    assert "--save_steps 2" in command and "--logging_steps 1" in command
    message = press_and_read(page, "ui-start", message)
    assert "pid" in message, message
    first = wait_state(page, lambda s: s["state"] == "running" and int(s["step"] or 0) >= 1 and int(s["points"] or 0) >= 1)
    later = wait_state(page, lambda s: int(s["step"] or 0) >= int(first["step"]) + 2 and int(s["points"]) > int(first["points"]))
    assert later["total"] == "40"
    # a second start on the same output is refused, naming why
    message = press_and_read(page, "ui-start", message)
    assert message.startswith("llmkit: error:") and "being written by another llmkit process" in message, message
    # ---- Stop saves a checkpoint
    page.locator("#ui-stop").click()
    stopped = wait_state(page, lambda s: s["state"] == "stopped")
    assert int(stopped["checkpoints"]) >= 1 and int(stopped["step"]) < 40, stopped
    checkpoints = list((root / "tiny-es/pretrain.partial/checkpoints").glob("checkpoint-*"))
    assert checkpoints and not (root / "tiny-es/pretrain").exists()
    page.wait_for_selector("#ui-curves canvas, #ui-curves svg")
    page.screenshot(path=str(shots / "recetas-detenida.png"), full_page=True)
    # ---- start again (the same command): it resumes; a reopened page finds it running, and it ends
    message = press_and_read(page, "ui-start", page.locator("#ui-message textarea").input_value())
    assert "pid" in message, message
    page.close()
    page = open_page(browser, page_server["url"])
    choose(page, "ui-stage", "pretrain")
    wait_state(page, lambda s: s["state"] in ("running", "finished"))
    assert state(page)["state"] == "running" or (root / "tiny-es/pretrain").is_dir()
    done = wait_state(page, lambda s: s["state"] == "finished", timeout=400)
    assert done["step"] == "40"
    assert "resuming from" in (root / "tiny-es/.ui/pretrain.log").read_text()
    assert (root / "tiny-es/pretrain/manifest.json").is_file()
    page.screenshot(path=str(shots / "recetas-terminada.png"), full_page=True)
    # ---- Runs: the run, complete, in the recipe's chain
    page.get_by_role("tab", name="Ejecuciones").click()
    page.locator("#ui-runs-refresh").click()
    page.wait_for_function("document.querySelector(\".ui-chain-stage[data-stage='pretrain']\").dataset.state === 'complete'")
    table = page.locator("#ui-runs").inner_text()
    assert "tiny-es/pretrain" in table and "completa" in table and "tiny-es/tokenizer" in table, table
    assert page.locator(".ui-chain-stage[data-stage='sft']").get_attribute("data-state") == "-"
    choose(page, "ui-run-pick", "tiny-es/pretrain")
    page.wait_for_selector("#ui-pictures img")
    page.screenshot(path=str(shots / "ejecuciones.png"), full_page=True)
    # ---- Chat: an answer from the run, on both sides (the same run twice: greedy, so the same answer)
    page.get_by_role("tab", name="Chat").click()
    choose(page, "ui-run-a", str(root / "tiny-es/pretrain"))
    choose(page, "ui-run-b", str(root / "tiny-es/pretrain"))
    page.locator("#ui-prompt textarea").fill("¿Cuánto es 2 más 3?")
    page.locator("#ui-send").click()
    for side in ("a", "b"):
        page.wait_for_function(f"document.querySelectorAll('#ui-chat-{side} .bot').length > 0 && "
                               f"[...document.querySelectorAll('#ui-chat-{side} .bot')].at(-1).innerText.trim().length > 0")
    time.sleep(1)  # the last tokens of side b
    answer = page.locator("#ui-chat-a .bot").last.inner_text()
    assert answer.strip() and not answer.startswith("llmkit: error"), answer
    assert page.locator("#ui-chat-b .bot").last.inner_text() == answer
    assert "¿Cuánto es 2 más 3?" in page.locator("#ui-chat-b").inner_text()
    page.screenshot(path=str(shots / "chat.png"), full_page=True)
    # ---- the language switch switches the labels
    page.locator("#ui-lang").get_by_text("en", exact=True).click()
    page.get_by_role("tab", name="Runs").wait_for()
    page.get_by_role("tab", name="Recipes").click()
    assert page.locator("#ui-start").inner_text().strip() == "Start / resume"
    page.wait_for_selector("#ui-keys th[title='default']")  # the key table's headers too
    assert page.locator("#ui-keys th[title='por defecto']").count() == 0
    assert page.locator("#ui-curves").get_by_text("Curves (metrics.jsonl)").count() >= 1
    assert page.get_by_role("tab", name="Ejecuciones").count() == 0
    page.screenshot(path=str(shots / "recipes-en.png"), full_page=True)
    page.close()


# ----------------------------------------------------------------------------- Evaluación and Servir

RANDOM_SEED = 0  # the random run's weights: its greedy text varies (checked below), so equal answers say something
NOT_PLAIN = set("*_`#|<>[]\\~&$")  # characters the chat's Markdown would render as something else


def random_copy(src: Path, dest: Path, seed: int, scale: float = 0.1) -> Path:
    """A copy of the finished run SRC (manifest, tokenizer, chat template) whose weights are seeded
    random: every matrix N(0, scale), every norm 1.  Tokens the chat shows other than as written
    (byte pieces of a UTF-8 character, control characters, Markdown, special tokens, whitespace
    runs) get a zero embedding: with tied embeddings their logit is 0, below the largest of ~2000
    random logits, so greedy decoding never picks them.  A 40-step pretrain, by contrast, answers
    '.' to everything: equal in any two engines without saying anything."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoints"))
    tok = AutoTokenizer.from_pretrained(dest)
    weights = load_file(dest / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for k in sorted(weights):
        v = weights[k]
        weights[k] = torch.randn(v.shape, generator=g) * scale if v.ndim == 2 else torch.ones_like(v)
    emb = weights["model.embed_tokens.weight"]
    for i in range(emb.shape[0]):
        s = tok.decode([i])
        if i in tok.all_special_ids or not s.strip() or "\ufffd" in s or "  " in s or any(ord(c) < 32 or c in NOT_PLAIN for c in s):
            emb[i] = 0
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def greedy(run: Path, messages: list[dict[str, str]], n: int) -> str:
    """The run's greedy answer, computed here with plain transformers (its chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run)
    model = AutoModelForCausalLM.from_pretrained(run).eval()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


@pytest.fixture(scope="module")
def tiny_runs(page_server):
    """Two finished runs: tiny-es/pretrain (the first test trains it through the page; run alone,
    this test trains it with the same settings on the command line) and tiny-es/aleatorio."""
    root = page_server["root"]
    pretrain = root / "tiny-es/pretrain"
    if not (pretrain / "manifest.json").is_file():
        argv = [f"--{k}={v}" for k, v in EDITS.items()]
        rc = subprocess.run([sys.executable, "-m", "llmkit", "pretrain", "--config", "recipes/tiny-es/pretrain.yaml", *argv,
                             "--output_dir", str(pretrain), "--tokenizer_name_or_path", str(root / "tiny-es/tokenizer")],
                            cwd=REPO, env=page_server["env"], capture_output=True, text=True)
        assert rc.returncode == 0, rc.stderr[-2000:]
    return {"pretrain": pretrain, "aleatorio": random_copy(pretrain, root / "tiny-es/aleatorio", RANDOM_SEED)}


def cell(text: str) -> tuple[float, float | None]:
    """'62.5 ± 18.0' -> (62.5, 18.0); '62.5 ± —' -> (62.5, None)."""
    value, _, err = text.partition(" ± ")
    return float(value), None if err.strip() in ("", "—") else float(err)


def test_evaluation_tab_evaluates_two_runs_and_shows_their_comparison(page_server, browser, tiny_runs):
    root, shots = page_server["root"], shots_dir()
    page = open_page(browser, page_server["url"])
    page.get_by_role("tab", name="Evaluación").click()
    wait_value(page, "#ui-eval-state textarea", lambda v: v == "Ninguna evaluación iniciada desde esta página.")
    # ---- no run chosen: one line, nothing started
    before = snapshot(root)
    page.locator("#ui-eval-start").click()
    message = wait_value(page, "#ui-eval-message textarea", lambda v: bool(v))
    assert message == "llmkit: error: choose at least one run to evaluate"
    assert snapshot(root) == before
    # ---- the two runs, a task group read from the offline fixtures, transformers
    for name in ("pretrain", "aleatorio"):
        page.locator("#ui-eval-runs").get_by_label(str(tiny_runs[name]), exact=True).check()
    choose(page, "ui-tasks", "es_mmlu")
    page.locator("#ui-limit input").fill("4")
    page.locator("#ui-limit input").press("Tab")
    choose(page, "ui-eval-engine", "transformers")
    page.locator("#ui-eval-start").click()
    message = wait_value(page, "#ui-eval-message textarea", lambda v: v.startswith("Iniciado"))
    for name in ("pretrain", "aleatorio"):
        assert f"llmkit eval {tiny_runs[name]} --tasks es_mmlu --engine transformers --limit 4" in message, message
    wait_value(page, "#ui-eval-state textarea", lambda v: v.startswith(("terminada", "falló")), timeout=400)
    state = page.locator("#ui-eval-state textarea").input_value()
    assert state.startswith("terminada"), f"{state}\n{(root / '.ui/eval.log').read_text()[-3000:]}"
    # ---- once finished, the page compares what it wrote: the numbers are those of each results.json
    page.wait_for_selector("#ui-compare-table table")
    results = {name: json.loads((root / "tiny-es/eval" / name / "results.json").read_text()) for name in ("pretrain", "aleatorio")}
    assert all(r["settings"]["data_dir"] == str(FIXTURES) and r["engine"]["name"] == "transformers" for r in results.values()), \
        [(r["settings"], r["engine"]) for r in results.values()]
    table = page.locator("#ui-compare-table table")
    head = table.locator("thead th").all_inner_texts()
    assert head[:5] == ["task", "metric", "chance", "pretrain", "aleatorio"] and head[5].startswith("Δ"), head
    rows = {r[0]: r for r in (row.locator("td").all_inner_texts() for row in table.locator("tbody tr").all())}
    tasks = list(results["pretrain"]["tasks"])
    assert len(tasks) == 6 and set(results["aleatorio"]["tasks"]) == set(tasks)
    means = {}
    for task in tasks:
        row = rows[task]
        values = []
        for col, name in ((3, "pretrain"), (4, "aleatorio")):
            meta = results[name]["tasks"][task]
            assert row[1] == meta["primary"] == "acc" and float(row[2]) == pytest.approx(100 * meta["chance"], abs=0.05)
            got, err = cell(row[col])
            want = meta["metrics"]["acc"]
            assert got == pytest.approx(100 * want["value"], abs=0.05), (task, name, row, want)
            assert err == (None if want.get("stderr") is None else pytest.approx(100 * want["stderr"], abs=0.05)), (task, row)
            values.append(100 * want["value"])
            means.setdefault(name, []).append(100 * want["value"])
        assert float(row[5]) == pytest.approx(values[1] - values[0], abs=0.051), row
    mean_row = next(r for k, r in rows.items() if k.startswith("mean"))
    assert [float(mean_row[i]) for i in (3, 4)] == [pytest.approx(sum(v) / len(v), abs=0.051) for v in means.values()], mean_row
    # ... the chart, and both results checked in the list
    page.wait_for_function("document.querySelector('#ui-compare-chart img')?.naturalWidth > 0")
    assert (root / "tiny-es/eval/compare/compare.png").is_file() and (root / "tiny-es/eval/compare/compare.md").is_file()
    assert page.locator("#ui-results input[type=checkbox]:checked").count() == 2
    page.screenshot(path=str(shots / "evaluacion.png"), full_page=True)
    page.close()


def listener_pid(port: int) -> int:
    import psutil

    pids = [c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN]
    assert pids and pids[0], f"nothing listens on port {port}"
    return pids[0]


def requests_logged(root: Path, port: int) -> list[str]:
    """The chat requests `transformers serve` logged (its log: <cache>/serve/<name>-<port>.log)."""
    (log,) = (root.parent / "cache" / "serve").glob(f"*-{port}.log")
    return [line for line in log.read_text(errors="replace").splitlines() if "[Request received]" in line]


def test_serve_tab_serves_a_run_and_chat_goes_through_that_server(page_server, browser, tiny_runs):
    root, shots, run = page_server["root"], shots_dir(), tiny_runs["aleatorio"]
    job_record = root / "tiny-es/.ui/serve-aleatorio.json"
    page = open_page(browser, page_server["url"])
    page.get_by_role("tab", name="Servir").click()
    choose(page, "ui-serve-run", str(run))
    choose(page, "ui-serve-engine", "transformers")
    wait_value(page, "#ui-serve-state textarea", lambda v: v == "Ningún servidor iniciado para esta ejecución.")
    # ---- a port in use: one line, nothing started
    before = snapshot(root)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        page.locator("#ui-port input").fill(str(taken))
        page.locator("#ui-port input").press("Tab")
        page.locator("#ui-serve-start").click()
        message = wait_value(page, "#ui-serve-message textarea", lambda v: bool(v))
    assert message == f"llmkit: error: port {taken} on 127.0.0.1 is already in use (Address already in use); pick another with --port"
    assert snapshot(root) == before and not job_record.exists()
    # ---- a free port: starting, then running once it answers, with the client snippet
    port = free_port()
    page.locator("#ui-port input").fill(str(port))
    page.locator("#ui-port input").press("Tab")
    page.locator("#ui-serve-start").click()
    message = wait_value(page, "#ui-serve-message textarea", lambda v: v.startswith("Iniciado"))
    assert f"llmkit serve {run} --port {port} --engine transformers" in message, message
    state = wait_value(page, "#ui-serve-state textarea", lambda v: v.startswith(("en marcha", "falló", "interrumpida")), timeout=300)
    serve_log = root / "tiny-es/.ui/serve-aleatorio.log"
    assert state.startswith(f"en marcha (http://127.0.0.1:{port}/v1 · {run})"), f"{state}\n{serve_log.read_text()[-3000:]}"
    page.wait_for_function("document.querySelector('#ui-snippet .cm-content')?.innerText.includes('print(')")
    snippet = page.locator("#ui-snippet .cm-content").inner_text()
    assert f'base_url="http://127.0.0.1:{port}/v1"' in snippet and repr(str(run)) in snippet, snippet
    page.screenshot(path=str(shots / "servir.png"), full_page=True)
    # the snippet, run as it is shown: the run's greedy answer
    hello = greedy(run, [{"role": "user", "content": "¡Hola!"}], 64)
    assert len(set(hello.split())) >= 5, f"a degenerate answer {hello!r} would prove nothing"
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, env=page_server["env"])
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.rstrip("\n") == hello
    # ---- Chat with the same run: through that server (its log counts the request), the same greedy text
    question = "¿Cuánto es 2 más 3?"
    want = greedy(run, [{"role": "user", "content": question}], 64)
    assert len(set(want.split())) >= 5 and want != hello, want
    served_before = requests_logged(root, port)
    page.get_by_role("tab", name="Chat").click()
    choose(page, "ui-run-a", str(run))
    page.locator("#ui-prompt textarea").fill(question)
    page.locator("#ui-send").click()
    flat = " ".join(want.split())  # the chat shows the text as HTML: runs of whitespace are one space
    deadline, answer = time.monotonic() + 120, ""
    while time.monotonic() < deadline and " ".join(answer.split()) != flat:
        bots = page.locator("#ui-chat-a .bot")
        answer = bots.last.inner_text() if bots.count() else ""
        time.sleep(0.3)
    assert " ".join(answer.split()) == flat, (answer, want)
    served = requests_logged(root, port)
    assert len(served) == len(served_before) + 1 and f"Model: {run}@" in served[-1], served
    page.screenshot(path=str(shots / "chat-servidor.png"), full_page=True)
    # ---- Stop: the server's process group is gone, the port is free
    server_group = os.getpgid(listener_pid(port))
    job_group = json.loads(job_record.read_text())["pid"]
    assert server_group != job_group  # `llmkit serve` starts its server in a group of its own: both must end
    page.get_by_role("tab", name="Servir").click()
    page.locator("#ui-serve-stop").click()
    message = wait_value(page, "#ui-serve-message textarea", lambda v: v.startswith(("Señal", "llmkit: error")))
    assert message.startswith("Señal SIGTERM enviada: el servidor se detiene."), message
    wait_value(page, "#ui-serve-state textarea", lambda v: v.startswith("detenido"), timeout=60)
    deadline = time.monotonic() + 30
    while (group_alive(server_group) or group_alive(job_group)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(server_group) and not group_alive(job_group)
    with socket.socket() as s:  # free again: nothing listens there (bound as servers bind, past the closed connections' TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    page.wait_for_function("!(document.querySelector('#ui-snippet .cm-content')?.innerText || '').trim()", timeout=10_000)  # no snippet
    page.close()
