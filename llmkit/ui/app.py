"""The page (Gradio): five tabs over llmkit.ui.jobs, every label from i18n (es/en).

Recetas starts the command a user would type; Ejecuciones reads the run directories; Evaluación
starts `llmkit eval` and, once it has finished, shows `--compare` of what it wrote; Servir starts
`llmkit serve` (running once the server answers, with an openai snippet of its port and model);
Chat talks to runs: through that server while one runs for the run, else loaded in this process."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from llmkit.config import LlmkitError
from llmkit.serving import ENGINES as SERVE_ENGINES
from llmkit.ui import jobs
from llmkit.ui.i18n import LANGS, cols, t

REFRESH_S = 1.5
STATE_COLORS = {"complete": "#2e7d32", "running": "#1565c0", "partial": "#ef6c00", "failed": "#c62828", "stopped": "#ef6c00",
                "-": "#9e9e9e", "unreadable": "#c62828"}


def error_line(exc: Exception) -> str:
    """What the CLI prints for the same mistake."""
    return f"llmkit: error: {exc}"


class Labels:
    """The components whose words change with the language: (component, key, how)."""

    def __init__(self, lang: str):
        self.lang = lang
        self.items: list[tuple[Any, str, str]] = []

    def __call__(self, key: str) -> str:
        return t(key, self.lang)

    def add(self, component, key: str, how: str = "label"):
        self.items.append((component, key, how))
        return component

    def updates(self, lang: str) -> list[Any]:
        out = []
        for _, key, how in self.items:
            if how == "label":
                out.append(gr.update(label=t(key, lang)))
            elif how == "headers":
                out.append(gr.update(headers=cols(key, lang)))
            elif how == "title":
                out.append(gr.update(value=f"## {t(key, lang)}\n{t('subtitle', lang)}"))
            else:
                out.append(gr.update(value=t(key, lang)))
        return out


# ----------------------------------------------------------------------------- recipes tab logic


def stage_choices(ws: jobs.Workspace, recipe: str | None, lang: str) -> list[tuple[str, str]]:
    if not recipe:
        return []
    try:
        stages = jobs.recipe_stages(ws, recipe)
    except LlmkitError:
        return []
    return [(f"{s['name']} ({s['stage']})" if s["name"] != s["stage"] else s["name"], s["name"]) for s in stages] + \
        [(t("whole_chain", lang), jobs.WHOLE_CHAIN)]


def show_stage(ws: jobs.Workspace, recipe: str | None, name: str | None):
    """(YAML, command) of the chosen stage: read from the files, fast."""
    if not recipe or not name:
        return "", ""
    try:
        return jobs.config_text(ws, recipe, name), jobs.build_plan(ws, recipe, name).command()
    except LlmkitError as exc:
        return "", error_line(exc)


def show_keys(ws: jobs.Workspace, recipe: str | None, name: str | None, lang: str):
    """Every key of the stage with the recipe's value, its default and help (imports the stage: seconds)."""
    rows: list[list[str]] = []
    if recipe and name and name != jobs.WHOLE_CHAIN:
        try:
            entry = jobs.stage_entry(ws, recipe, name)
            rows = jobs.key_rows(entry["stage"], jobs.read_yaml(entry["config"]))
        except LlmkitError as exc:
            rows = [["", "", "", error_line(exc)]]
    return _frame(rows, cols("key_cols", lang))


def _frame(rows: list[list[str]], headers: list[str]):
    """A table whose column names are the headers (in the page's language)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=headers)


def warm_up(ws: jobs.Workspace, recipe: str | None) -> None:
    """Import the recipe's stage modules (TRL: seconds) in the background, so the first check is quick."""
    import threading

    def work() -> None:
        from llmkit.stages import stage_module

        try:
            for s in jobs.recipe_stages(ws, recipe) if recipe else []:
                stage_module(s["stage"])
        except Exception:  # noqa: BLE001 - only a head start
            pass

    threading.Thread(target=work, daemon=True).start()


def plan_for(ws: jobs.Workspace, recipe: str | None, name: str | None, text: str | None) -> jobs.Plan:
    if not recipe or not name:
        raise LlmkitError("choose a recipe and a stage")
    return jobs.build_plan(ws, recipe, name, text if text and text.strip() else None)


def command_for(ws, recipe, name, text) -> str:
    try:
        return plan_for(ws, recipe, name, text).command()
    except LlmkitError as exc:
        return error_line(exc)


def check(ws, recipe, name, text, lang) -> tuple[str, str]:
    try:
        plan = plan_for(ws, recipe, name, text)
        jobs.validate(ws, plan)
        return t("ok_valid", lang), plan.command()
    except LlmkitError as exc:
        return error_line(exc), command_for(ws, recipe, name, text)


def start(ws, recipe, name, text, lang) -> tuple[str, str]:
    try:
        plan = plan_for(ws, recipe, name, text)
        jobs.validate(ws, plan)
        job = jobs.start(ws, [plan.argv], plan.output_dir, plan.name)
        return f"{t('started', lang)} (pid {job['pid']}): {plan.command()}", plan.command()
    except LlmkitError as exc:
        return error_line(exc), command_for(ws, recipe, name, text)


def stop(ws, recipe, name, text, lang) -> str:
    try:
        plan = _quiet_plan(ws, recipe, name, text)
        command = jobs.stop(plan.output_dir, plan.name)
        return f"{t('stopping', lang)} ({command})"
    except LlmkitError as exc:
        return error_line(exc)


def _quiet_plan(ws, recipe, name, text) -> jobs.Plan:
    """The plan of the edited YAML, else of the recipe's own (to follow a run while editing)."""
    try:
        return plan_for(ws, recipe, name, text)
    except LlmkitError:
        return plan_for(ws, recipe, name, None)


def progress_html(job: dict[str, Any] | None, output_dir: Path, log: str, lang: str) -> str:
    if not job:
        return f"<div id='ui-state' data-state='none'>{html.escape(t('no_job', lang))}</div>"
    state = job.get("state") or jobs.job_state(job)
    p = jobs.progress(log)
    step, total = (p["step"], p["total"]) if p else (0, 0)
    eta = f" · {t('eta', lang)} {p['eta_s']} s" if p and p.get("eta_s") is not None and state == "running" else ""
    ck = jobs.checkpoints(output_dir)
    points = len(jobs.curve_rows(output_dir))
    bar = f"<progress id='ui-bar' max='{total or 1}' value='{step}' style='width:100%'></progress>"
    return (f"<div id='ui-state' data-state='{state}' data-step='{step}' data-total='{total}' data-points='{points}' "
            f"data-checkpoints='{len(ck)}'><b>{html.escape(t('state_' + state, lang))}</b> · {t('step', lang)} {step}/{total or '?'}"
            f"{eta} · {t('checkpoints', lang)}: {html.escape(', '.join(ck) or '-')} · {points} {t('points', lang)}{bar}"
            f"<div style='font-size:85%;color:#666'>{html.escape(job.get('command', ''))}</div></div>")


def curves_frame(output_dir: Path):
    import pandas as pd

    rows = jobs.curve_rows(output_dir)
    frame = pd.DataFrame(rows, columns=["step", "value", "metric"])
    return frame.astype({"step": "float64", "value": "float64", "metric": "str"})  # numbers even when empty (the plot's axis types)


def refresh_job(ws, recipe, name, text, lang):
    """(progress HTML, curve points, log tail) of the chosen stage's output directory."""
    try:
        plan = _quiet_plan(ws, recipe, name, text)
    except LlmkitError:
        return progress_html(None, Path("."), "", lang), curves_frame(Path("/nonexistent")), ""
    jobs.reap()
    job = jobs.read_job(jobs.job_file(plan.output_dir, plan.name))
    if job is None:
        external = [j for j in jobs.discover(ws) if j.get("external") and Path(j["output_dir"]) == plan.output_dir]
        job = external[0] if external else None
    else:
        job["state"] = jobs.job_state(job)
    log = jobs.tail(job.get("log") if job else None, 60)
    out = plan.output_dir
    if plan.stage == jobs.WHOLE_CHAIN:  # the chain's curves: those of the stage it is on
        out = jobs.chain_current(ws, recipe, jobs.tail(job.get("log") if job else None, 2000)) or out
    return progress_html(job, out, log, lang), curves_frame(out), log


# ----------------------------------------------------------------------------- runs tab logic


def runs_table(ws, lang):
    rows = jobs.find_runs(ws)
    return _frame([[r["run"], r["stage"], t("status_" + r["status"], lang), r["inputs"], r["metrics"], r["wall_time"], r["finished"]]
                   for r in rows], cols("run_cols", lang))


def chain_html(ws, recipe, lang) -> str:
    if not recipe:
        return ""
    try:
        states = jobs.chain_states(ws, recipe)
    except LlmkitError as exc:
        return html.escape(error_line(exc))
    boxes = []
    for s in states:
        color = STATE_COLORS.get(s["state"], "#9e9e9e")
        label = t("status_" + s["state"], lang) if ("status_" + s["state"]) in _status_keys() else s["state"]
        boxes.append(f"<span class='ui-chain-stage' data-stage='{html.escape(s['name'])}' data-state='{s['state']}' "
                     f"style='display:inline-block;padding:6px 10px;margin:2px;border-radius:6px;color:white;background:{color}'>"
                     f"<b>{html.escape(s['name'])}</b><br><small>{html.escape(label)}</small></span>")
    return f"<div id='ui-chain'>{' → '.join(boxes)}</div>"


def _status_keys() -> set[str]:
    from llmkit.ui.i18n import LABELS

    return {k for k in LABELS if k.startswith("status_")}


def run_details(ws, run: str | None):
    if not run:
        return [], []
    path = ws.runs_root / run
    return jobs.run_pictures(path), jobs.run_samples(path)


# ----------------------------------------------------------------------------- eval tab logic


EVAL_OUT, EVAL_JOB = "eval", "eval"  # the job record: <runs root>/.ui/eval.json


def eval_start(ws, chosen: list[str], tasks: str, limit, engine: str, lang: str) -> str:
    try:
        commands = jobs.eval_commands(ws, chosen, tasks, limit, engine)
        outputs = jobs.eval_outputs(chosen)
        job = jobs.start(ws, commands, ws.runs_root / EVAL_OUT, EVAL_JOB, kind="eval", extra={"outputs": [str(o) for o in outputs]})
        return f"{t('started', lang)} (pid {job['pid']}): {job['command']}"
    except LlmkitError as exc:
        return error_line(exc)


def eval_tick(ws, lang: str, shown: str | None):
    """(state, log, results list, table, chart, shown) of the page's evaluation; once it has
    finished, the results it wrote are checked in the list and compared (one: its report), once."""
    job = jobs.read_job(jobs.job_file(ws.runs_root / EVAL_OUT, EVAL_JOB))
    if not job:
        return t("no_eval", lang), "", gr.skip(), gr.skip(), gr.skip(), shown
    state = jobs.job_state(job)
    text, log = f"{t('state_' + state, lang)}: {job['command']}", jobs.tail(job.get("log"), 30)
    key = str(job.get("started"))
    if state != "finished" or shown == key:
        return text, log, gr.skip(), gr.skip(), gr.skip(), shown
    done = [o for o in job.get("outputs", []) if (Path(o) / "results.json").is_file()]
    table, chart = eval_compare(ws, done)
    return text, log, gr.update(choices=jobs.eval_results(ws), value=done), table, chart, key


def eval_compare(ws, chosen: list[str]):
    """`llmkit eval --compare` of the chosen results (compare.md, compare.png next to the first);
    one result: its own report.md and results.png."""
    from llmkit.evaluation import report

    try:
        paths = [Path(p) for p in chosen or []]
        if not paths:
            raise LlmkitError("choose the results to compare (two or more; one shows its report)")
        if len(paths) == 1:
            md, png = paths[0] / "report.md", paths[0] / "results.png"
            return md.read_text(encoding="utf-8") if md.is_file() else "", str(png) if png.is_file() else None
        out = paths[0].parent / "compare"
        if not ws.inside(out):
            raise LlmkitError(f"{out} is outside {ws.runs_root}")
        text = report.compare(paths, out_dir=out, echo=False)
        png = out / "compare.png"
        return text, str(png) if png.is_file() else None
    except LlmkitError as exc:
        return error_line(exc), None


# ----------------------------------------------------------------------------- serve and chat logic


def _serve_name(run: str) -> str:
    return "serve-" + Path(run).name


def _serve_job(run: str) -> dict[str, Any] | None:
    """The page's server for RUN while its process runs (answering or still starting)."""
    job = jobs.read_job(jobs.job_file(Path(run), _serve_name(run))) if run else None
    return job if jobs.job_alive(job) else None


def _server_url(job: dict[str, Any]) -> str:
    return f"http://127.0.0.1:{job['port']}"


def _port(value) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535 or (isinstance(value, float) and value != port):
        raise LlmkitError(f"port {value!r}: choose a whole number from 1 to 65535, e.g. 8000")
    return port


def serve_start(ws, run: str | None, port, engine: str, lang: str) -> str:
    """`llmkit serve RUN --port P --engine E` in the background, after the checks it makes first."""
    try:
        if not run:
            raise LlmkitError("choose a run to serve")
        port = _port(port)
        busy = _serve_job(run)
        if busy:
            raise LlmkitError(f"{busy.get('command')} is still running; stop it first")
        from llmkit.serving import check_port_free

        check_port_free("127.0.0.1", port)
        argv = ["serve", run, "--port", str(port), "--engine", engine]
        job = jobs.start(ws, [argv], Path(run), _serve_name(run), kind="serve", extra={"port": port, "engine": engine})
        return f"{t('started', lang)} (pid {job['pid']}): {job['command']}"
    except LlmkitError as exc:
        return error_line(exc)


def serve_stop(run: str | None, lang: str) -> str:
    try:
        if not run:
            raise LlmkitError("choose a run")
        return f"{t('stopping_server', lang)} ({jobs.stop(Path(run), _serve_name(run))})"
    except LlmkitError as exc:
        return error_line(exc)


def client_snippet(port: int, model: str) -> str:
    """Python that talks to the server (the openai client): the port and model name it serves."""
    return (f'from openai import OpenAI\n\nclient = OpenAI(base_url="http://127.0.0.1:{port}/v1", api_key="none")\n'
            f'reply = client.chat.completions.create(model={model!r}, messages=[{{"role": "user", "content": "¡Hola!"}}],\n'
            f'                                       temperature=0, max_tokens=64)\n'
            f'print(reply.choices[0].message.content)\n')


def serve_status(run: str | None, lang: str) -> tuple[str, str, str]:
    """(state, log, client snippet): starting until the server answers, then running with its
    URL and model name (and the snippet); stopped, failed or lost once its process has ended."""
    from llmkit.ui import chat

    job = jobs.read_job(jobs.job_file(Path(run), _serve_name(run))) if run else None
    if not job:
        return t("no_server", lang), "", ""
    log = jobs.tail(job.get("log"), 25)
    if not jobs.job_alive(job):
        state = jobs.job_state(job)
        state = "server_stopped" if state in ("finished", "stopped") else state
        return f"{t('state_' + state, lang)}: {job['command']}", log, ""
    model = chat.server_model(_server_url(job), run)
    if model is None:
        return f"{t('state_starting', lang)}: {job['command']}", log, ""
    return (f"{t('state_running', lang)} ({_server_url(job)}/v1 · {model}): {job['command']}", log,
            client_snippet(job["port"], model))


def chat_send(run_a, run_b, system, temperature, max_tokens, prompt, hist_a, hist_b):
    from llmkit.ui import chat

    prompt = (prompt or "").strip()
    if not prompt:
        yield hist_a, hist_b, ""
        return
    hist_a = list(hist_a or []) + [{"role": "user", "content": prompt}]
    hist_b = list(hist_b or []) + ([{"role": "user", "content": prompt}] if run_b else [])
    for side, run in (("a", run_a), ("b", run_b)):
        if not run:
            continue
        hist = hist_a if side == "a" else hist_b
        msgs = chat.conversation(hist, system)
        hist.append({"role": "assistant", "content": ""})
        try:
            server = _serve_job(run)
            if server:  # the run served from the Serve tab: the answer comes from that server
                model = chat.server_model(_server_url(server), run)
                if model is None:
                    raise LlmkitError(f"the server for {run} ({_server_url(server)}) is still starting: wait until "
                                      "the Serve tab says it is running, or stop it to chat in this process")
                extra = {"repeat_penalty": 1.0} if server.get("engine") == "llama.cpp" else None  # its default 1.1 is no greedy
                stream = chat.stream_server(_server_url(server), model, msgs, temperature, max_tokens, extra=extra)
            else:
                stream = chat.stream_local(run, msgs, temperature, max_tokens)
            for text in stream:
                hist[-1] = {"role": "assistant", "content": text}
                yield hist_a, hist_b, ""
        except Exception as exc:  # noqa: BLE001 - a failed answer is shown, the page keeps going
            hist[-1] = {"role": "assistant", "content": error_line(exc)}
            yield hist_a, hist_b, ""


# ----------------------------------------------------------------------------- the page


def build(ws: jobs.Workspace, lang: str = "es") -> gr.Blocks:
    if lang not in LANGS:
        raise LlmkitError(f"--lang {lang!r}: choose es or en")
    L = Labels(lang)
    recipes = jobs.list_recipes(ws)
    first = "tiny-es" if "tiny-es" in recipes else (recipes[0] if recipes else None)  # the embedded default
    warm_up(ws, first)
    with gr.Blocks(title="llmkit ui", analytics_enabled=False) as demo:
        with gr.Row():
            L.add(gr.Markdown(f"## {L('title')}\n{L('subtitle')}", elem_id="ui-title"), "title", "title")
            lang_radio = gr.Radio(list(LANGS), value=lang, label=L("lang"), elem_id="ui-lang", scale=0, min_width=200)
        with gr.Tabs():
            with L.add(gr.Tab(L("tab_recipes"), id="recipes", elem_id="tab-recipes"), "tab_recipes"):
                with gr.Row():
                    recipe = L.add(gr.Dropdown(recipes, value=first, label=L("recipe"), elem_id="ui-recipe"), "recipe")
                    stage = L.add(gr.Dropdown(stage_choices(ws, first, lang), value=None, label=L("stage"), elem_id="ui-stage"), "stage")
                with gr.Row():
                    with gr.Column(scale=3):
                        yaml_box = L.add(gr.Code("", language="yaml", interactive=True, label=L("yaml"), elem_id="ui-yaml"), "yaml")
                        command = L.add(gr.Textbox("", label=L("command"), buttons=["copy"], elem_id="ui-command"), "command")
                        with gr.Row():
                            check_btn = L.add(gr.Button(L("check"), elem_id="ui-check"), "check", "value")
                            start_btn = L.add(gr.Button(L("start"), variant="primary", elem_id="ui-start"), "start", "value")
                            stop_btn = L.add(gr.Button(L("stop"), variant="stop", elem_id="ui-stop"), "stop", "value")
                        message = L.add(gr.Textbox("", label=L("message"), lines=2, interactive=False, elem_id="ui-message"), "message")
                        prog = gr.HTML(progress_html(None, Path("."), "", lang), elem_id="ui-progress")
                        plot = L.add(gr.LinePlot(curves_frame(Path("/nonexistent")), x="step", y="value", color="metric", height=260,
                                                 label=L("curves"), elem_id="ui-curves"), "curves")
                        log = L.add(gr.Textbox("", label=L("log"), lines=12, max_lines=12, interactive=False, autoscroll=True,
                                               elem_id="ui-log"), "log")
                    with gr.Column(scale=2):
                        keys = L.add(gr.Dataframe(show_keys(ws, None, None, lang), label=L("keys"), interactive=False,
                                                  wrap=True, max_height=900, column_widths=["28%", "22%", "15%", "35%"],
                                                  elem_id="ui-keys"), "keys")
            with L.add(gr.Tab(L("tab_runs"), id="runs", elem_id="tab-runs"), "tab_runs"):
                refresh_runs = L.add(gr.Button(L("refresh"), elem_id="ui-runs-refresh"), "refresh", "value")
                chain = gr.HTML("", elem_id="ui-chain-box")
                table = L.add(gr.Dataframe(runs_table(ws, lang), label=L("runs_table"),
                                           interactive=False, wrap=True, elem_id="ui-runs",
                                           column_widths=["14%", "8%", "9%", "27%", "26%", "7%", "9%"]), "runs_table")
                run_pick = L.add(gr.Dropdown([r["run"] for r in jobs.find_runs(ws)], label=L("run"), elem_id="ui-run-pick"), "run")
                with gr.Row():
                    pictures = L.add(gr.Gallery(label=L("pictures"), columns=2, height=360, object_fit="contain",
                                                      elem_id="ui-pictures"), "pictures")
                    samples = L.add(gr.JSON(label=L("samples"), elem_id="ui-samples"), "samples")
            with L.add(gr.Tab(L("tab_eval"), id="eval", elem_id="tab-eval"), "tab_eval"):
                from llmkit.evaluation.suite import GROUPS

                eval_runs = L.add(gr.CheckboxGroup(jobs.model_runs(ws), label=L("eval_runs"), elem_id="ui-eval-runs"), "eval_runs")
                with gr.Row():  # a group, or task names typed comma-separated (as --tasks takes them)
                    tasks = L.add(gr.Dropdown(sorted(GROUPS), value="es_llm" if "es_llm" in GROUPS else None, label=L("tasks"),
                                              allow_custom_value=True, elem_id="ui-tasks"), "tasks")
                    limit = L.add(gr.Number(20, label=L("limit"), minimum=0, elem_id="ui-limit"), "limit")
                    engine = L.add(gr.Dropdown(["auto", "vllm", "transformers"], value="auto", label=L("engine"),
                                               elem_id="ui-eval-engine"), "engine")
                eval_btn = L.add(gr.Button(L("evaluate"), variant="primary", elem_id="ui-eval-start"), "evaluate", "value")
                eval_msg = L.add(gr.Textbox("", label=L("message"), interactive=False, elem_id="ui-eval-message"), "message")
                eval_state = L.add(gr.Textbox("", label=L("eval_state"), interactive=False, elem_id="ui-eval-state"), "eval_state")
                eval_log = L.add(gr.Textbox("", label=L("log"), lines=8, max_lines=8, interactive=False, elem_id="ui-eval-log"), "log")
                results = L.add(gr.CheckboxGroup(jobs.eval_results(ws), label=L("results"), elem_id="ui-results"), "results")
                compare_btn = L.add(gr.Button(L("compare"), elem_id="ui-compare"), "compare", "value")
                compare_md = gr.Markdown("", elem_id="ui-compare-table")
                compare_png = L.add(gr.Image(label=L("compare_chart"), type="filepath", elem_id="ui-compare-chart"), "compare_chart")
                eval_shown = gr.State(None)  # the finished evaluation whose results the page has shown
            with L.add(gr.Tab(L("tab_chat"), id="chat", elem_id="tab-chat"), "tab_chat"):
                model_choices = jobs.model_runs(ws)
                with gr.Row():
                    run_a = L.add(gr.Dropdown(model_choices, label=L("run_a"), elem_id="ui-run-a"), "run_a")
                    run_b = L.add(gr.Dropdown(model_choices, label=L("run_b"), elem_id="ui-run-b"), "run_b")
                with gr.Row():
                    system = L.add(gr.Textbox("", label=L("system"), elem_id="ui-system"), "system")
                    temperature = L.add(gr.Slider(0.0, 1.5, value=0.0, step=0.05, label=L("temperature")), "temperature")
                    max_tokens = L.add(gr.Slider(8, 512, value=64, step=8, label=L("max_tokens")), "max_tokens")
                with gr.Row():
                    chat_a = L.add(gr.Chatbot(label=L("run_a"), height=320, elem_id="ui-chat-a"), "run_a")
                    chat_b = L.add(gr.Chatbot(label=L("run_b"), height=320, elem_id="ui-chat-b"), "run_b")
                prompt = L.add(gr.Textbox("", label=L("prompt"), elem_id="ui-prompt"), "prompt")
                with gr.Row():
                    send = L.add(gr.Button(L("send"), variant="primary", elem_id="ui-send"), "send", "value")
                    clear = L.add(gr.Button(L("clear"), elem_id="ui-clear"), "clear", "value")
            with L.add(gr.Tab(L("tab_serve"), id="serve", elem_id="tab-serve"), "tab_serve"):
                with gr.Row():
                    serve_run = L.add(gr.Dropdown(model_choices, label=L("serve_run"), elem_id="ui-serve-run"), "serve_run")
                    port = L.add(gr.Number(8000, label=L("port"), precision=0, elem_id="ui-port"), "port")
                    serve_engine = L.add(gr.Dropdown(list(SERVE_ENGINES), value="auto", label=L("engine"), elem_id="ui-serve-engine"),
                                         "engine")
                with gr.Row():
                    serve_btn = L.add(gr.Button(L("serve_start"), variant="primary", elem_id="ui-serve-start"), "serve_start", "value")
                    unserve_btn = L.add(gr.Button(L("serve_stop"), variant="stop", elem_id="ui-serve-stop"), "serve_stop", "value")
                serve_msg = L.add(gr.Textbox("", label=L("message"), interactive=False, elem_id="ui-serve-message"), "message")
                serve_state = L.add(gr.Textbox("", label=L("serve_state"), interactive=False, elem_id="ui-serve-state"), "serve_state")
                serve_log = L.add(gr.Textbox("", label=L("log"), lines=8, max_lines=8, interactive=False, elem_id="ui-serve-log"), "log")
                snippet = L.add(gr.Code("", language="python", label=L("snippet"), elem_id="ui-snippet"), "snippet")
        timer = gr.Timer(REFRESH_S)

        # ---- wiring
        def on_recipe(r, lg):
            return gr.update(choices=stage_choices(ws, r, lg), value=None), *show_stage(ws, r, None), show_keys(ws, r, None, lg), \
                chain_html(ws, r, lg)

        recipe.change(on_recipe, [recipe, lang_radio], [stage, yaml_box, command, keys, chain])
        stage.change(lambda r, s: show_stage(ws, r, s), [recipe, stage], [yaml_box, command]).then(
            lambda r, s, lg: show_keys(ws, r, s, lg), [recipe, stage, lang_radio], [keys])
        yaml_box.change(lambda r, s, y: command_for(ws, r, s, y), [recipe, stage, yaml_box], [command])
        check_btn.click(lambda r, s, y, lg: check(ws, r, s, y, lg), [recipe, stage, yaml_box, lang_radio], [message, command])
        start_btn.click(lambda r, s, y, lg: start(ws, r, s, y, lg), [recipe, stage, yaml_box, lang_radio], [message, command])
        stop_btn.click(lambda r, s, y, lg: stop(ws, r, s, y, lg), [recipe, stage, yaml_box, lang_radio], [message])
        timer.tick(lambda r, s, y, lg: refresh_job(ws, r, s, y, lg), [recipe, stage, yaml_box, lang_radio], [prog, plot, log],
                   show_progress="hidden")

        def on_runs(r, lg):
            found = jobs.find_runs(ws)
            models = jobs.model_runs(ws)
            return (runs_table(ws, lg), gr.update(choices=[x["run"] for x in found]), chain_html(ws, r, lg),
                    gr.update(choices=models), gr.update(choices=models), gr.update(choices=models), gr.update(choices=models),
                    gr.update(choices=jobs.eval_results(ws)))

        runs_outputs = [table, run_pick, chain, eval_runs, run_a, run_b, serve_run, results]
        refresh_runs.click(on_runs, [recipe, lang_radio], runs_outputs)
        demo.load(on_runs, [recipe, lang_radio], runs_outputs)
        run_pick.change(lambda r: run_details(ws, r), [run_pick], [pictures, samples])

        eval_btn.click(lambda c, tk, lm, e, lg: eval_start(ws, c, tk, lm, e, lg), [eval_runs, tasks, limit, engine, lang_radio], [eval_msg])
        timer.tick(lambda lg, sh: eval_tick(ws, lg, sh), [lang_radio, eval_shown],
                   [eval_state, eval_log, results, compare_md, compare_png, eval_shown], show_progress="hidden")
        compare_btn.click(lambda c: eval_compare(ws, c), [results], [compare_md, compare_png])

        send.click(chat_send, [run_a, run_b, system, temperature, max_tokens, prompt, chat_a, chat_b], [chat_a, chat_b, prompt])
        prompt.submit(chat_send, [run_a, run_b, system, temperature, max_tokens, prompt, chat_a, chat_b], [chat_a, chat_b, prompt])
        clear.click(lambda: ([], []), None, [chat_a, chat_b])

        serve_btn.click(lambda r, p, e, lg: serve_start(ws, r, p, e, lg), [serve_run, port, serve_engine, lang_radio], [serve_msg])
        unserve_btn.click(lambda r, lg: serve_stop(r, lg), [serve_run, lang_radio], [serve_msg])
        timer.tick(lambda r, lg: serve_status(r, lg), [serve_run, lang_radio], [serve_state, serve_log, snippet], show_progress="hidden")

        def on_lang(lg, r, s):
            updates = L.updates(lg)
            more = {id(keys): {"value": show_keys(ws, r, s, lg)}, id(table): {"value": runs_table(ws, lg)},  # headers too
                    id(stage): {"choices": stage_choices(ws, r, lg)}}
            for i, (c, _, _) in enumerate(L.items):
                if id(c) in more:
                    updates[i] = gr.update(label=updates[i]["label"], **more[id(c)])
            return [*updates, chain_html(ws, r, lg)]

        lang_radio.change(on_lang, [lang_radio, recipe, stage], [*(c for c, _, _ in L.items), chain])
    return demo
