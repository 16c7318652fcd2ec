"""`llmkit ui` in a real browser: headless Chromium (Debian's package) driven by Playwright.

The page runs as `llmkit ui --runs <tmp>/runs` in its own process.  Through the page: bad input
is refused with llmkit's one-line messages (nothing started, nothing written); a short tiny-es
pretrain starts, its progress and curve move, a second start on the same output is refused,
Stop saves a checkpoint, a reloaded page finds the run, Start resumes it to the end; Runs lists
it; Chat answers from it; the language switch switches the labels.  A screenshot of each tab
goes to .cache/ui-test/ (or $LLMKIT_UI_SHOTS)."""

from __future__ import annotations

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
           "GRADIO_ANALYTICS_ENABLED": "False"}
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
    yield {"url": f"http://127.0.0.1:{port}/", "root": root, "proc": proc}
    for f in root.rglob(".ui/*.json"):  # a run the test left running: stop its group
        import json

        pid = json.loads(f.read_text()).get("pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
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
    for tab, name in (("Evaluación", "evaluacion"), ("Servir", "servir")):
        page.get_by_role("tab", name=tab).click()
        time.sleep(1)
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
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
