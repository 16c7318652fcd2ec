"""`llmkit eval` configured like a stage: EvalArgs is the one place of each key's default and
help, `--help` is built by the stages' format_help, and the command line, `--config eval.yaml`,
a recipe's eval.yaml and `llmkit.evaluate` are read by the stages' config loader (same
messages). Nothing here loads a model."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import llmkit

from llmkit.config import LlmkitError
from llmkit.evaluation.command import parse_eval_argv
from llmkit.evaluation.runner import EvalArgs, eval_recipe, load_eval_config


def _args(argv: list[str]) -> EvalArgs:
    cmd = parse_eval_argv(argv)
    return load_eval_config(cmd.config, cmd.overrides).get(EvalArgs)


def test_help_lists_every_key_with_its_default_and_help(capsys):
    assert llmkit("eval", "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmkit eval")
    for f in dataclasses.fields(EvalArgs):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert f"  --{f.name} (default: {default!r})\n" in out, f.name
        assert f.metadata.get("help"), f"EvalArgs.{f.name} has no help text"
        assert " ".join(f.metadata["help"].split())[:60] in out, f.name
    for flag in ("--config", "--compare", "--recipe", "--force", "--verbose"):
        assert f"\n  {flag}" in out, flag
    assert "--eval" not in out and "llmkit <stage>" not in out


def test_the_command_line_keeps_the_old_flags(monkeypatch):
    monkeypatch.delenv("LLMKIT_API_KEY", raising=False)
    a = _args(["runs/x", "--tasks", "copa_es,sqac_es", "--engine", "transformers", "--limit", "2", "--log_samples",
               "--apply_chat_template", "--seed", "7", "--api-key", "secret", "--max_model_len", "512"])
    assert (a.target, a.tasks, a.engine, a.seed, a.api_key, a.max_model_len) == ("runs/x", "copa_es,sqac_es", "transformers", 7,
                                                                                  "secret", 512)
    assert a.limit == 2.0 and isinstance(a.limit, float) and a.log_samples is True and a.apply_chat_template is True
    assert a.overwrite is False and a.bootstrap_iters == 100000  # EvalArgs' defaults
    # a true/false key before the target does not swallow it
    b = _args(["--log_samples", "runs/y", "--overwrite"])
    assert (b.target, b.log_samples, b.overwrite) == ("runs/y", True, True)
    assert _args(["--apply_chat_template", "false", "runs/y"]).apply_chat_template is False
    assert _args(["--api_key=k2", "runs/y"]).api_key == "k2"


def test_api_key_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("LLMKIT_API_KEY", "from-env")
    assert _args(["runs/x"]).api_key == "from-env"
    assert _args(["runs/x", "--api-key", "given"]).api_key == "given"


def test_config_file_then_command_line(tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("target: runs/sft\ntasks: copa_es\nlimit: 5\nseed: 3\nengine: transformers\nextra: {max_batch_size: 4}\n")
    a = _args(["--config", str(cfg), "--seed", "9"])
    assert (a.target, a.tasks, a.limit, a.seed, a.engine, a.extra) == ("runs/sft", "copa_es", 5.0, 9, "transformers",
                                                                       {"max_batch_size": 4})
    assert _args(["-c", str(cfg), "runs/other"]).target == "runs/other"  # the positional target wins over the file's


def test_bad_keys_and_values_get_the_stages_messages(tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("tasks: copa_es\nnum_fewshots: 2\n")
    with pytest.raises(LlmkitError, match=r"eval.yaml: unknown key 'num_fewshots'. Did you mean: num_fewshot\?"):
        _args(["runs/x", "--config", str(cfg)])
    cfg.write_text("seed: many\n")
    with pytest.raises(LlmkitError, match=r"eval.yaml: 'seed' must be an integer, got 'many'"):
        _args(["runs/x", "--config", str(cfg)])
    cfg.write_text("tasks: [unclosed\n")
    with pytest.raises(LlmkitError, match="YAML syntax error at line"):
        _args(["runs/x", "--config", str(cfg)])
    for argv, expected in ((["runs/x", "--engine", "vlm"], "'engine' must be one of"),
                           (["runs/x", "--limt", "3"], "unknown key 'limt'. Did you mean: limit?"),
                           (["runs/x", "runs/y"], "unexpected argument 'runs/y'"),
                           (["--tasks", "copa_es"], "needs a run directory or model"),
                           (["--compare"], "--compare needs"),
                           (["--recipe", "recipes/tiny-es", "--output_dir", "x"], "output_dir does not apply")):
        capsys.readouterr()
        assert llmkit("eval", *argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("llmkit: error: ") and expected in err and err.count("\n") == 1, (argv, err)


def test_recipe_eval_yaml_is_typed_and_checked(tmp_path):
    recipe = tmp_path / "r"
    recipe.mkdir()
    (recipe / "pipeline.yaml").write_text("name: r\nstages:\n  - {name: sft, stage: sft}\n")
    (recipe / "sft.yaml").write_text(f"output_dir: {tmp_path / 'never-run'}\n")
    (recipe / "eval.yaml").write_text("tasks: copa_es\nlimit: lots\n")
    with pytest.raises(LlmkitError, match=r"eval.yaml: 'limit' must be a number, got 'lots'"):
        eval_recipe(recipe)
    (recipe / "eval.yaml").write_text("tasks: copa_es\ntarget: runs/x\n")
    with pytest.raises(LlmkitError, match=r"eval.yaml: unknown key 'target'"):
        eval_recipe(recipe)
    (recipe / "eval.yaml").write_text("stages: [sft]\ntasks: copa_es\n")
    with pytest.raises(LlmkitError, match="no finished stage"):  # the stage has not run: nothing is evaluated
        eval_recipe(recipe, {"limit": 2.0})


def test_python_api_refuses_an_unknown_option(tmp_path):
    import llmkit as api

    with pytest.raises(LlmkitError, match=r"unknown key 'nonsense_option'"):
        api.evaluate(tmp_path, tasks="copa_es", nonsense_option=1)
    with pytest.raises(LlmkitError, match=r"'limit' must be a number"):
        api.evaluate(tmp_path, tasks="copa_es", limit="many")
