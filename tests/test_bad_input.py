"""The bad-input contract: a mistake in a config, a path or a data file ends the command with

* exit status 2,
* exactly one ``llmkit: error:`` line on stderr that names what is wrong,
* no traceback,
* nothing written: neither ``<output_dir>`` nor ``<output_dir>.partial`` appears, and a finished
  run already in ``output_dir`` stays byte for byte as it was.

Every case fails in validation, before any model is trained, so each takes about a second.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL, llmkit, write_jsonl

ERROR = "llmkit: error:"


# --------------------------------------------------------------------------- helpers


def partial(p: Path) -> Path:
    return p.with_name(p.name + ".partial")


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (relative path -> bytes)."""
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def siblings(p: Path) -> set[str]:
    return {x.name for x in p.parent.iterdir()} if p.parent.exists() else set()


def run_refused(capsys, argv: list, needles: list[str]) -> str:
    """Run the CLI in-process; check exit 2, one error line holding every needle, no traceback.
    Returns the error line."""
    try:
        rc = llmkit(*argv)
    except SystemExit as exc:  # argparse and friends
        cap = capsys.readouterr()
        pytest.fail(f"SystemExit({exc.code}) instead of a return code\nstdout:\n{cap.out}\nstderr:\n{cap.err}")
    except BaseException as exc:  # noqa: BLE001 - an escaped exception is what `llmkit` shows as a traceback
        cap = capsys.readouterr()
        pytest.fail(
            f"uncaught {type(exc).__name__}: {exc}  (the CLI would print a Traceback)\n"
            f"argv: {[str(a) for a in argv]}\n{''.join(traceback.format_exception(exc))}\nstderr:\n{cap.err[-3000:]}"
        )
    cap = capsys.readouterr()
    shown = f"argv: {[str(a) for a in argv]}\nrc={rc}\nstdout:\n{cap.out[-3000:]}\nstderr:\n{cap.err[-3000:]}"
    assert "Traceback" not in cap.out + cap.err, shown
    assert rc == 2, shown
    lines = [ln for ln in cap.err.splitlines() if ERROR in ln]
    assert len(lines) == 1, shown
    line = lines[0]
    assert line.startswith(ERROR), shown
    for n in needles:
        assert n in line, f"expected {n!r} in the error line\n{shown}"
    return line


def dump(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def good_rows(n: int = 8) -> list[dict]:
    return [{"messages": [msg("user", f"¿Cuánto es {i} más {i}?"), msg("assistant", f"La respuesta es {2 * i}.")]} for i in range(n)]


@dataclasses.dataclass
class Ctx:
    tmp: Path
    base_model: Path
    tokenizer_run: Path
    corpus: Path
    out: Path  # the output_dir every case uses

    def data(self, name: str, rows: list[dict]) -> Path:
        return write_jsonl(self.tmp / name, rows)

    def raw(self, name: str, content: bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(content)
        return p

    def sft(self, argv: tuple = (), name: str = "sft.yaml", **kw) -> list:
        cfg = {
            "model_name_or_path": str(self.base_model),
            "datasets": [str(kw.pop("train", None) or self.data("train.jsonl", good_rows()))],
            "output_dir": str(self.out),
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "eval_split_size": 0,
            "sample_prompts": 0,
            "save_strategy": "no",
            "logging_steps": 1,
        }
        cfg.update(kw)
        return ["sft", "--config", dump(self.tmp / name, cfg), *argv]

    def pretrain(self, argv: tuple = (), **kw) -> list:
        cfg = {
            "tokenizer_name_or_path": str(self.tokenizer_run),
            "model_config": dict(TINY_MODEL),
            "datasets": [str(self.corpus)],
            "output_dir": str(self.out),
            "block_size": 32,
            "max_steps": 1,
            "per_device_train_batch_size": 2,
            "eval_split_size": 0,
            "save_strategy": "no",
            "logging_steps": 1,
        }
        cfg.update(kw)
        return ["pretrain", "--config", dump(self.tmp / "pretrain.yaml", cfg), *argv]

    def tokenizer(self, argv: tuple = (), **kw) -> list:
        cfg = {"output_dir": str(self.out), "datasets": [str(self.corpus)], "vocab_size": 300}
        cfg.update(kw)
        return ["tokenizer", "--config", dump(self.tmp / "tokenizer.yaml", cfg), *argv]


@pytest.fixture
def ctx(tmp_path, base_model, tokenizer_run, corpus) -> Ctx:
    return Ctx(tmp_path, base_model, tokenizer_run, corpus, tmp_path / "runs" / "out")


# --------------------------------------------------------------------------- the cases
# Each case builds a command line in ctx and returns (argv, substrings the error line must hold).

CASES: dict[str, Callable[[Ctx], tuple[list, list[str]]]] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ---- config keys and values


@case
def unknown_key_in_yaml(c: Ctx):
    argv = c.sft(learnig_rate=1e-4)
    return argv, ["learnig_rate", str(c.tmp / "sft.yaml"), "Did you mean: learning_rate"]


@case
def unknown_key_in_yaml_pretrain(c: Ctx):
    argv = c.pretrain(blok_size=64)
    return argv, ["blok_size", str(c.tmp / "pretrain.yaml"), "block_size"]


@case
def unknown_key_in_yaml_tokenizer(c: Ctx):
    argv = c.tokenizer(vocab_sise=300)
    return argv, ["vocab_sise", str(c.tmp / "tokenizer.yaml"), "vocab_size"]


@case
def unknown_key_on_command_line(c: Ctx):
    return c.sft(argv=("--learnig_rate", "1e-4")), ["learnig_rate", "command line", "Did you mean: learning_rate"]


@case
def unknown_key_on_command_line_dashes(c: Ctx):
    return c.sft(argv=("--lora-rr", "8")), ["lora_rr", "lora_r"]


@case
def yaml_syntax_error(c: Ctx):
    p = c.tmp / "broken.yaml"
    p.write_text(f"model_name_or_path: {c.base_model}\nmax_steps: 1\noutput_dir: {c.out}\n  learning_rate: 1e-4\n", encoding="utf-8")
    return ["sft", "--config", p], [str(p), "line 4"]


@case
def config_file_missing(c: Ctx):
    return ["sft", "--config", c.tmp / "nope.yaml", "--output_dir", c.out], ["nope.yaml", "not found"]


@case
def config_not_a_mapping(c: Ctx):
    p = c.tmp / "list.yaml"
    p.write_text("- max_steps: 1\n- output_dir: x\n", encoding="utf-8")
    return ["sft", "--config", p, "--output_dir", c.out], [str(p), "mapping"]


@case
def negative_learning_rate(c: Ctx):
    return c.sft(learning_rate=-1e-4), ["learning_rate", "positive"]


@case
def negative_learning_rate_on_command_line(c: Ctx):
    return c.sft(argv=("--learning_rate", "-1e-4")), ["learning_rate", "positive"]


@case
def learning_rate_not_a_number(c: Ctx):
    return c.sft(argv=("--learning_rate", "fast")), ["learning_rate", "fast"]


@case
def lora_r_zero_with_use_peft(c: Ctx):
    return c.sft(use_peft=True, lora_r=0), ["lora_r"]


@case
def lora_r_zero_with_use_peft_pretrain(c: Ctx):
    return c.pretrain(model_config=None, tokenizer_name_or_path=None, model_name_or_path=str(c.base_model),
                      use_peft=True, lora_r=0), ["lora_r"]


@case
def block_size_too_small(c: Ctx):
    return c.pretrain(block_size=4), ["block_size"]


@case
def block_size_larger_than_the_data(c: Ctx):
    tiny = c.data("tiny_corpus.jsonl", [{"text": "Hola, mundo."}, {"text": "Buenos días."}])
    return c.pretrain(block_size=4096, datasets=[str(tiny)]), ["block_size"]


@case
def block_size_not_a_number(c: Ctx):
    return c.pretrain(argv=("--block_size", "big")), ["block_size"]


@case
def vocab_size_not_a_number(c: Ctx):
    return c.tokenizer(argv=("--vocab_size", "lots")), ["vocab_size"]


@case
def eval_split_size_not_a_number(c: Ctx):
    return c.sft(eval_split_size="some"), ["eval_split_size"]


@case
def zero_steps_and_epochs(c: Ctx):
    return c.sft(max_steps=0, num_train_epochs=0), ["max_steps"]


@case
def batch_size_zero(c: Ctx):
    return c.sft(per_device_train_batch_size=0), ["per_device_train_batch_size"]


@case
def qlora_without_use_peft(c: Ctx):
    return c.sft(load_in_4bit=True), ["use_peft", "load_in_4bit"]


@case
def pretrain_both_model_config_and_model(c: Ctx):
    return c.pretrain(model_name_or_path=str(c.base_model)), ["model_config", "model_name_or_path"]


@case
def model_config_misspelled_key(c: Ctx):
    """A typo inside model_config must not silently fall back to the architecture's default
    (here 32 layers instead of 2; with hidden_size misspelled it would be a 7B model)."""
    spec = {k: v for k, v in TINY_MODEL.items() if k != "num_hidden_layers"}
    spec["num_hiden_layers"] = 2
    return c.pretrain(model_config=spec), ["num_hiden_layers"]


@case
def lora_target_modules_not_in_model(c: Ctx):
    return c.sft(use_peft=True, lora_target_modules=["q_prj", "v_prj"]), ["q_prj"]


@case
def lora_target_modules_one_misspelled(c: Ctx):
    """PEFT only fails when no name matches; a typo in one of several names is silently dropped."""
    return c.sft(use_peft=True, lora_target_modules=["q_prj", "v_proj"]), ["q_prj"]


@case
def dtype_invalid(c: Ctx):
    return c.sft(dtype="float61"), ["float61"]


@case
def lr_scheduler_type_invalid(c: Ctx):
    return c.sft(lr_scheduler_type="cosinus"), ["cosinus"]


@case
def dataset_format_unknown(c: Ctx):
    train = c.data("alpaca.jsonl", [{"instruction": "Hola", "input": "", "output": "Adiós"}])
    return c.sft(datasets=[{"path": str(train), "format": "alpaka"}]), ["alpaka"]


# ---- model and tokenizer paths


@case
def missing_model_path(c: Ctx):
    return c.sft(model_name_or_path="/nonexistent"), ["/nonexistent", "not found"]


@case
def missing_model_path_nested(c: Ctx):
    missing = c.tmp / "models" / "nope"
    return c.sft(model_name_or_path=str(missing)), [str(missing)]


@case
def model_dir_without_config_json(c: Ctx):
    d = c.tmp / "empty_model"
    d.mkdir()
    (d / "README.md").write_text("not a model\n")
    return c.sft(model_name_or_path=str(d)), [str(d), "config.json"]


@case
def missing_tokenizer_path_pretrain(c: Ctx):
    missing = c.tmp / "no_tokenizer"
    return c.pretrain(tokenizer_name_or_path=str(missing)), [str(missing), "not found"]


@case
def missing_tokenizer_pretrain_not_given(c: Ctx):
    return c.pretrain(tokenizer_name_or_path=None), ["tokenizer_name_or_path"]


@case
def model_is_unfinished_run(c: Ctx):
    unfinished = c.tmp / "runs" / "sft_unfinished"
    shutil.copytree(c.base_model, partial(unfinished))
    return c.sft(model_name_or_path=str(unfinished)), [str(unfinished), "did not finish"]


@case
def tokenizer_is_unfinished_run_pretrain(c: Ctx):
    unfinished = c.tmp / "runs" / "tok_unfinished"
    shutil.copytree(c.tokenizer_run, partial(unfinished))
    return c.pretrain(tokenizer_name_or_path=str(unfinished)), [str(unfinished), "did not finish"]


@case
def model_with_broken_manifest(c: Ctx):
    d = c.tmp / "runs" / "broken_manifest"
    shutil.copytree(c.base_model, d)
    (d / "manifest.json").write_text('{"stage": "sft", "status": "runn')
    return c.sft(model_name_or_path=str(d)), [str(d), "manifest"]


# ---- data files


@case
def dataset_file_missing(c: Ctx):
    missing = c.tmp / "nope.jsonl"
    return c.sft(train=missing), [str(missing), "not found"]


@case
def dataset_file_empty(c: Ctx):
    p = c.raw("empty.jsonl", b"")
    return c.sft(train=p), [str(p), "empty"]


@case
def dataset_file_blank_lines_only(c: Ctx):
    p = c.raw("blank.jsonl", b"\n\n  \n")
    return c.sft(train=p), [str(p), "empty"]


@case
def dataset_without_needed_columns(c: Ctx):
    p = c.data("foo.jsonl", [{"foo": "bar"}, {"foo": "baz"}])
    return c.sft(train=p), [str(p), "messages", "prompt", "completion", "found: foo"]


@case
def dataset_without_text_column_pretrain(c: Ctx):
    p = c.data("notext.jsonl", [{"body": "Hola"}, {"body": "Adiós"}])
    return c.pretrain(datasets=[str(p)]), [str(p), "'text'", "found: body"]


@case
def dataset_without_text_column_tokenizer(c: Ctx):
    p = c.data("notext.jsonl", [{"body": "Hola"}])
    return c.tokenizer(datasets=[str(p)]), [str(p), "'text'", "found: body"]


@case
def malformed_jsonl_row(c: Ctx):
    good = [json.dumps(r, ensure_ascii=False) for r in good_rows(4)]
    lines = good[:2] + ['{"messages": [{"role": "user", "content": "Hola"}'] + good[2:]
    p = c.raw("malformed.jsonl", ("\n".join(lines) + "\n").encode())
    return c.sft(train=p), [str(p), "line 3", "JSON"]


@case
def jsonl_row_not_an_object(c: Ctx):
    good = [json.dumps(r, ensure_ascii=False) for r in good_rows(4)]
    p = c.raw("array_row.jsonl", ("\n".join(good[:3] + ["[1, 2, 3]"] + good[3:]) + "\n").encode())
    return c.sft(train=p), [str(p), "line 4"]


@case
def invalid_utf8_line(c: Ctx):
    good = [json.dumps(r, ensure_ascii=False).encode() for r in good_rows(4)]
    bad = '{"messages": [{"role": "user", "content": "año"}, {"role": "assistant", "content": "sí"}]}'.encode("latin-1")
    p = c.raw("latin1.jsonl", b"\n".join(good[:1] + [bad] + good[1:]) + b"\n")
    return c.sft(train=p), [str(p), "line 2", "UTF-8"]


@case
def invalid_utf8_line_pretrain(c: Ctx):
    p = c.raw("latin1_corpus.jsonl", b'{"text": "Hola"}\n{"text": "Espa\xf1a"}\n')
    return c.pretrain(datasets=[str(p)]), [str(p), "line 2", "UTF-8"]


@case
def message_with_unknown_role(c: Ctx):
    rows = good_rows(4)
    rows[1] = {"messages": [msg("robot", "Hola"), msg("assistant", "Hola")]}
    p = c.data("role.jsonl", rows)
    return c.sft(train=p), [str(p), "line 2", "robot"]


@case
def assistant_message_empty(c: Ctx):
    rows = good_rows(4)
    rows[2] = {"messages": [msg("user", "Hola"), msg("assistant", "   ")]}
    p = c.data("empty_answer.jsonl", rows)
    return c.sft(train=p), [str(p), "line 3", "empty"]


@case
def last_message_not_assistant(c: Ctx):
    rows = good_rows(5)
    rows[3] = {"messages": [msg("user", "Hola"), msg("assistant", "Hola"), msg("user", "¿Y?")]}
    p = c.data("last_user.jsonl", rows)
    return c.sft(train=p), [str(p), "line 4", "last message"]


@case
def message_without_content(c: Ctx):
    rows = good_rows(3)
    rows[0] = {"messages": [{"role": "user"}, msg("assistant", "Hola")]}
    p = c.data("nocontent.jsonl", rows)
    return c.sft(train=p), [str(p), "line 1", "content"]


@case
def messages_not_a_list(c: Ctx):
    rows = good_rows(3)
    rows[2] = {"messages": "Hola"}
    p = c.data("strmsgs.jsonl", rows)
    return c.sft(train=p), [str(p), "line 3", "messages"]


@case
def empty_text_row_pretrain(c: Ctx):
    p = c.data("emptytext.jsonl", [{"text": "Hola, mundo."}, {"text": ""}])
    return c.pretrain(datasets=[str(p)]), [str(p), "line 2", "empty"]


@case
def prompt_completion_missing_completion(c: Ctx):
    p = c.data("pc.jsonl", [{"prompt": "Hola", "completion": "Adiós"}, {"prompt": "Hola", "completion": None}])
    return c.sft(train=p), [str(p), "line 2", "completion"]


@case
def eval_dataset_malformed(c: Ctx):
    good = [json.dumps(r, ensure_ascii=False) for r in good_rows(3)]
    p = c.raw("eval_bad.jsonl", ("\n".join(good + ["{not json"]) + "\n").encode())
    return c.sft(eval_datasets=[str(p)]), [str(p), "line 4"]


@case
def dataset_spec_unknown_key(c: Ctx):
    train = c.data("train.jsonl", good_rows())
    return c.sft(datasets=[{"path": str(train), "wieght": 0.5}]), ["wieght"]


@case
def dataset_spec_negative_weight(c: Ctx):
    train = c.data("train.jsonl", good_rows())
    return c.sft(datasets=[{"path": str(train), "weight": -1}]), ["weight"]


@case
def no_datasets(c: Ctx):
    return c.sft(datasets=[]), ["datasets"]


# ---- chat template


@case
def assistant_only_loss_without_generation_markers(c: Ctx):
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    return c.sft(argv=("--chat_template", plain), assistant_only_loss=True), ["assistant_only_loss", "generation"]


@case
def model_init_kwargs_cache_dir_outside_output_dir(c: Ctx):
    return c.sft(model_init_kwargs={"cache_dir": str(c.tmp / "hf_cache")}), ["model_init_kwargs.cache_dir", "outside", str(c.out)]


@case
def output_dir_is_the_filesystem_root(c: Ctx):
    return c.tokenizer(output_dir="/"), ["cannot hold a run"]


@case
def chat_template_file_missing(c: Ctx):
    missing = c.tmp / "missing.jinja"
    return c.sft(chat_template=str(missing)), [str(missing)]


CASE_IDS = sorted(CASES)


@pytest.mark.parametrize("name", CASE_IDS)
def test_refused_and_nothing_written(capsys, ctx, name):
    argv, needles = CASES[name](ctx)
    before = siblings(ctx.out)
    run_refused(capsys, argv, needles)
    assert not ctx.out.exists(), f"{ctx.out} was created"
    assert not partial(ctx.out).exists(), f"{partial(ctx.out)} was created"
    assert siblings(ctx.out) <= before, f"new entries next to output_dir: {siblings(ctx.out) - before}"


@pytest.mark.parametrize("name", CASE_IDS)
def test_refused_with_overwrite_keeps_finished_run(capsys, ctx, name):
    """The same mistakes with --overwrite over a finished run: the old run survives intact."""
    shutil.copytree(ctx.tokenizer_run, ctx.out)
    argv, needles = CASES[name](ctx)
    before = snapshot(ctx.out)
    before_siblings = siblings(ctx.out)
    assert "manifest.json" in before
    run_refused(capsys, [*argv, "--overwrite"], needles)
    assert snapshot(ctx.out) == before, "the finished run in output_dir was modified"
    assert not partial(ctx.out).exists(), f"{partial(ctx.out)} was created"
    assert siblings(ctx.out) == before_siblings, f"new entries next to output_dir: {siblings(ctx.out) - before_siblings}"


# --------------------------------------------------------------------------- controls


def test_control_sft_config_is_valid(capsys, ctx):
    """The base config of the sft cases trains: the cases fail for the reason they name."""
    rc = llmkit(*ctx.sft())
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    assert (ctx.out / "manifest.json").is_file()
    assert not partial(ctx.out).exists()


def test_control_pretrain_config_is_valid(capsys, ctx):
    rc = llmkit(*ctx.pretrain())
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-3000:]
    assert (ctx.out / "manifest.json").is_file()


# --------------------------------------------------------------------------- output_dir


def test_finished_run_is_refused_without_overwrite_and_replaced_with_it(capsys, ctx):
    out = ctx.out
    first = ["tokenizer", "--output_dir", out, "--datasets", f"[{ctx.corpus}]", "--vocab_size", "300"]
    assert llmkit(*first) == 0
    capsys.readouterr()
    before = snapshot(out)
    manifest_before = (out / "manifest.json").read_bytes()

    line = run_refused(capsys, first, [str(out), "finished", "--overwrite"])
    assert "tokenizer" in line
    assert snapshot(out) == before
    assert (out / "manifest.json").read_bytes() == manifest_before
    assert not partial(out).exists()

    # a different config into the same finished run: refused too
    run_refused(capsys, [*first[:-1], "320"], [str(out), "--overwrite"])
    assert snapshot(out) == before

    # with --overwrite it is replaced
    assert llmkit(*first[:-1], "320", "--overwrite") == 0
    capsys.readouterr()
    manifest_after = (out / "manifest.json").read_bytes()
    assert manifest_after != manifest_before
    assert json.loads(manifest_after)["config_hash"] != json.loads(manifest_before)["config_hash"]
    assert json.loads(manifest_after)["status"] == "complete"
    assert not partial(out).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name], "leftover .old-* or .partial directories"


def test_finished_run_is_refused_by_sft_before_any_loading(capsys, ctx):
    shutil.copytree(ctx.tokenizer_run, ctx.out)
    before = snapshot(ctx.out)
    run_refused(capsys, ctx.sft(), [str(ctx.out), "--overwrite"])
    assert snapshot(ctx.out) == before
    assert not partial(ctx.out).exists()


@pytest.mark.parametrize("stage", ["tokenizer", "sft", "pretrain"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_nonempty_output_dir_is_refused(capsys, ctx, stage, overwrite):
    ctx.out.mkdir(parents=True)
    (ctx.out / "notes.txt").write_text("mis notas\n")
    (ctx.out / "sub").mkdir()
    (ctx.out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(ctx.out)
    argv = getattr(ctx, stage)()
    run_refused(capsys, [*argv, *(["--overwrite"] if overwrite else [])], [str(ctx.out), "not an llmkit run"])
    assert snapshot(ctx.out) == before
    assert not partial(ctx.out).exists()


def test_output_dir_that_is_a_file_is_refused(capsys, ctx):
    ctx.out.parent.mkdir(parents=True)
    ctx.out.write_text("hola\n")
    run_refused(capsys, ctx.tokenizer(), [str(ctx.out), "file"])
    assert ctx.out.read_text() == "hola\n"
    assert not partial(ctx.out).exists()


def test_empty_existing_output_dir_is_accepted(capsys, ctx):
    """An empty directory is not foreign: the run goes into it."""
    ctx.out.mkdir(parents=True)
    assert llmkit(*ctx.tokenizer()) == 0
    capsys.readouterr()
    assert (ctx.out / "manifest.json").is_file()


def test_output_dir_required(capsys, ctx):
    argv = ctx.tokenizer()
    dump(ctx.tmp / "tokenizer.yaml", {"datasets": [str(ctx.corpus)], "vocab_size": 300})
    run_refused(capsys, argv, ["output_dir"])


# --------------------------------------------------------------------------- llmkit run


def test_run_without_pipeline_yaml(capsys, tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "tokenizer.yaml").write_text(f"output_dir: {tmp_path / 'tok'}\n")
    run_refused(capsys, ["run", recipe], ["pipeline.yaml", str(recipe)])
    assert not (tmp_path / "tok").exists()


def test_run_on_missing_recipe_dir(capsys, tmp_path):
    run_refused(capsys, ["run", tmp_path / "nope"], [str(tmp_path / "nope"), "not found"])


def test_run_pipeline_with_unknown_stage(capsys, tmp_path, corpus):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    tok_out = tmp_path / "runs" / "tok"
    dump(recipe / "tokenizer.yaml", {"output_dir": str(tok_out), "datasets": [str(corpus)], "vocab_size": 300})
    (recipe / "pipeline.yaml").write_text("name: t\nstages:\n  - tokenizer\n  - {name: align, stage: dpoo}\n")
    run_refused(capsys, ["run", recipe], ["dpoo", "pipeline.yaml"])
    assert not tok_out.exists() and not partial(tok_out).exists()


def test_run_pipeline_unknown_key_in_later_stage_fails_before_first_stage(capsys, tmp_path, corpus):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    tok_out = tmp_path / "runs" / "tok"
    dump(recipe / "tokenizer.yaml", {"output_dir": str(tok_out), "datasets": [str(corpus)], "vocab_size": 300})
    dump(recipe / "sft.yaml", {"output_dir": str(tmp_path / "runs" / "sft"), "model_name_or_path": str(tok_out), "learnig_rate": 1e-4})
    (recipe / "pipeline.yaml").write_text("name: t\nstages: [tokenizer, sft]\n")
    run_refused(capsys, ["run", recipe], ["learnig_rate", str(recipe / "sft.yaml")])
    assert not tok_out.exists() and not partial(tok_out).exists()


def test_run_pipeline_missing_stage_config(capsys, tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "pipeline.yaml").write_text("name: t\nstages: [tokenizer]\n")
    run_refused(capsys, ["run", recipe], [str(recipe / "tokenizer.yaml")])


def test_run_pipeline_yaml_syntax_error(capsys, tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "pipeline.yaml").write_text("name: t\nstages: [tokenizer\nfoo: 1\n")
    run_refused(capsys, ["run", recipe], [str(recipe / "pipeline.yaml"), "line 3"])


def test_run_pipeline_unknown_top_level_key(capsys, tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "pipeline.yaml").write_text("name: t\nstagse: [tokenizer]\n")
    run_refused(capsys, ["run", recipe], ["stagse"])


# --------------------------------------------------------------------------- merge and the CLI itself


def test_merge_of_a_non_adapter_run(capsys, tmp_path, base_model):
    out = tmp_path / "merged"
    run_refused(capsys, ["merge", base_model, "--output_dir", out], [str(base_model), "adapter"])
    assert not out.exists() and not partial(out).exists()


def test_merge_of_a_missing_run(capsys, tmp_path):
    out = tmp_path / "merged"
    run_refused(capsys, ["merge", tmp_path / "nope", "--output_dir", out], [str(tmp_path / "nope")])
    assert not out.exists() and not partial(out).exists()


def test_stray_positional_argument(capsys, ctx):
    run_refused(capsys, [*ctx.sft(), "oops"], ["oops"])
    assert not ctx.out.exists()


def test_config_flag_without_file(capsys):
    run_refused(capsys, ["sft", "--config"], ["--config"])


def test_a_configuration_the_trainer_refuses_is_one_line_and_leaves_nothing(tmp_path, base_model, sft_data, capsys):
    """TRL's SFTTrainer refuses an eos_token its tokenizer does not have: llmkit reports it as one
    line naming the file and removes the staging directory it had just opened. (It used to be
    padding_free with max_length, which llmkit now supports: llmkit/batching.py.)"""
    out = tmp_path / "sft"
    rc = llmkit("sft", "--output_dir", out, "--model_name_or_path", base_model, "--datasets", f"[{sft_data[0]}]",
                "--eos_token", "<|no_such_token|>", "--max_steps", "1", "--eval_split_size", "0")
    assert rc == 2
    err = capsys.readouterr().err
    assert "SFTTrainer refused the configuration" in err and "no_such_token" in err and "Traceback" not in err
    assert not out.exists() and not out.with_name("sft.partial").exists()
