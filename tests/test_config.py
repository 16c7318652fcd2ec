"""Unit tests of llmkit.config: YAML + command-line merge, typing of values, unknown keys,
YAML errors, config hashes and `llmkit <stage> --help`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import llmkit

from llmkit.config import LlmkitError, parse_overrides, read_yaml


def load(stage: str, yaml_text: str | None = None, argv: list[str] | None = None, tmp_path: Path | None = None):
    """Load a stage config the way the CLI does (stage classes + stage defaults)."""
    from llmkit.cli import load_config_for

    path = None
    if yaml_text is not None:
        assert tmp_path is not None
        path = tmp_path / f"{stage}.yaml"
        path.write_text(yaml_text, encoding="utf-8")
    _, cfg = load_config_for(stage, str(path) if path else None, argv)
    return cfg


def value(cfg, key: str):
    """The final value of ``key`` in the first dataclass that holds it."""
    for a in cfg.args:
        if hasattr(a, key):
            return getattr(a, key)
    raise KeyError(key)


# --------------------------------------------------------------------------- merge and precedence


def test_yaml_values_reach_the_dataclasses(tmp_path):
    cfg = load("sft", "learning_rate: 0.001\nmax_steps: 7\nlora_r: 4\noutput_dir: out/x\n", tmp_path=tmp_path)
    assert value(cfg, "learning_rate") == pytest.approx(1e-3)
    assert value(cfg, "max_steps") == 7
    assert value(cfg, "lora_r") == 4
    assert value(cfg, "output_dir") == "out/x"
    assert cfg.explicit == {"learning_rate": 1e-3, "max_steps": 7, "lora_r": 4, "output_dir": "out/x"}


def test_cli_overrides_yaml(tmp_path):
    cfg = load(
        "sft",
        "learning_rate: 0.001\nmax_steps: 7\nlora_r: 4\n",
        ["--learning_rate", "0.5", "--max_steps=9"],
        tmp_path=tmp_path,
    )
    assert value(cfg, "learning_rate") == pytest.approx(0.5)
    assert value(cfg, "max_steps") == 9
    assert value(cfg, "lora_r") == 4  # untouched YAML value survives
    assert cfg.explicit["learning_rate"] == pytest.approx(0.5)


def test_cli_only_without_config_file():
    cfg = load("sft", None, ["--max_steps", "3", "--lora_r", "2"])
    assert value(cfg, "max_steps") == 3
    assert value(cfg, "lora_r") == 2
    assert cfg.source == "command line"


def test_stage_defaults_apply_only_to_unset_keys(tmp_path):
    # llmkit's defaults for sft include report_to: none and logging_steps: 10
    cfg = load("sft", "logging_steps: 3\n", tmp_path=tmp_path)
    assert value(cfg, "logging_steps") == 3
    assert "logging_steps" in cfg.explicit
    cfg2 = load("sft", "max_steps: 1\n", tmp_path=tmp_path)
    assert value(cfg2, "logging_steps") == 10
    assert "logging_steps" not in cfg2.explicit


def test_shared_keys_reach_every_class(tmp_path):
    """A key declared by several classes (seed: SFTConfig and ...) is given to each of them."""
    cfg = load("sft", "seed: 123\n", tmp_path=tmp_path)
    holders = [a for a in cfg.args if hasattr(a, "seed")]
    assert holders
    assert all(a.seed == 123 for a in holders)


def test_empty_yaml_is_an_empty_config(tmp_path):
    cfg = load("sft", "", tmp_path=tmp_path)
    assert cfg.explicit == {}


# --------------------------------------------------------------------------- type coercion


def test_yaml_exponent_float_becomes_float(tmp_path):
    """PyYAML reads `1e-4` (no dot) as a string; llmkit types it against the field."""
    import yaml

    assert isinstance(yaml.safe_load("learning_rate: 1e-4")["learning_rate"], str)
    cfg = load("sft", "learning_rate: 1e-4\n", tmp_path=tmp_path)
    lr = value(cfg, "learning_rate")
    assert isinstance(lr, float) and lr == pytest.approx(1e-4)
    assert isinstance(cfg.explicit["learning_rate"], float)


def test_cli_exponent_float_becomes_float():
    cfg = load("sft", None, ["--learning_rate", "1e-4"])
    assert isinstance(value(cfg, "learning_rate"), float)
    assert value(cfg, "learning_rate") == pytest.approx(1e-4)


def test_bare_flag_is_true():
    cfg = load("sft", None, ["--use_peft", "--max_steps", "1"])
    assert value(cfg, "use_peft") is True
    assert value(cfg, "max_steps") == 1
    # a bare flag as the last argument too
    cfg = load("sft", None, ["--max_steps", "1", "--use_peft"])
    assert value(cfg, "use_peft") is True


@pytest.mark.parametrize("text,expected", [("true", True), ("false", False), ("True", True), ("no", False), ("yes", True)])
def test_bool_from_cli_words(text, expected):
    cfg = load("sft", None, ["--use_peft", text])
    assert value(cfg, "use_peft") is expected


def test_bool_rejects_non_bool(tmp_path):
    with pytest.raises(LlmkitError, match="use_peft"):
        load("sft", "use_peft: maybe\n", tmp_path=tmp_path)


def test_comma_list_from_cli():
    cfg = load("sft", None, ["--lora_target_modules", "q_proj,v_proj"])
    assert value(cfg, "lora_target_modules") == ["q_proj", "v_proj"]


def test_yaml_list_stays_list(tmp_path):
    cfg = load("sft", "lora_target_modules: [q_proj, k_proj]\n", tmp_path=tmp_path)
    assert value(cfg, "lora_target_modules") == ["q_proj", "k_proj"]


def test_int_from_cli_string():
    cfg = load("sft", None, ["--max_steps", "12", "--lora_r", "8"])
    assert value(cfg, "max_steps") == 12 and isinstance(value(cfg, "max_steps"), int)
    assert value(cfg, "lora_r") == 8 and isinstance(value(cfg, "lora_r"), int)


def test_int_from_quoted_yaml_string(tmp_path):
    cfg = load("sft", 'max_steps: "12"\nper_device_train_batch_size: "2"\n', tmp_path=tmp_path)
    assert value(cfg, "max_steps") == 12 and isinstance(value(cfg, "max_steps"), int)
    assert value(cfg, "per_device_train_batch_size") == 2


def test_integral_float_for_int_key(tmp_path):
    cfg = load("sft", "max_steps: 5.0\n", tmp_path=tmp_path)
    assert value(cfg, "max_steps") == 5 and isinstance(value(cfg, "max_steps"), int)


def test_float_key_accepts_int(tmp_path):
    cfg = load("sft", "learning_rate: 1\n", tmp_path=tmp_path)
    assert value(cfg, "learning_rate") == 1.0 and isinstance(value(cfg, "learning_rate"), float)


@pytest.mark.parametrize("where", ["yaml", "cli"])
def test_non_number_for_float_key_is_rejected(tmp_path, where):
    with pytest.raises(LlmkitError) as e:
        if where == "yaml":
            load("sft", "learning_rate: fast\n", tmp_path=tmp_path)
        else:
            load("sft", None, ["--learning_rate", "fast"])
    msg = str(e.value)
    assert "learning_rate" in msg
    assert "number" in msg
    assert "fast" in msg


@pytest.mark.parametrize("where", ["yaml", "cli"])
def test_non_integer_for_int_key_is_rejected(tmp_path, where):
    with pytest.raises(LlmkitError) as e:
        if where == "yaml":
            load("sft", "max_steps: many\n", tmp_path=tmp_path)
        else:
            load("sft", None, ["--max_steps", "many"])
    assert "max_steps" in str(e.value)
    assert "integer" in str(e.value)


# llmkit's own stage keys (SftArgs, PretrainArgs, TokenizerArgs) must be typed just like the
# TRL/transformers ones: a quoted number becomes a number, a word for a number is rejected.
LLMKIT_OWN_NUMERIC = [
    ("sft", "eval_split_size", "0.1", 0.1, float),
    ("sft", "sample_prompts", "3", 3, int),
    ("pretrain", "block_size", "64", 64, int),
    ("pretrain", "eval_split_size", "1e-2", 0.01, float),
    ("tokenizer", "vocab_size", "600", 600, int),
    ("tokenizer", "min_frequency", "3", 3, int),
]


@pytest.mark.parametrize("stage,key,text,expected,typ", LLMKIT_OWN_NUMERIC)
def test_llmkit_own_numeric_keys_are_coerced_from_yaml_strings(tmp_path, stage, key, text, expected, typ):
    cfg = load(stage, f'{key}: "{text}"\n', tmp_path=tmp_path)
    got = value(cfg, key)
    assert isinstance(got, typ), f"{key}: {got!r} is {type(got).__name__}, expected {typ.__name__}"
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("stage,key,text,expected,typ", LLMKIT_OWN_NUMERIC)
def test_llmkit_own_numeric_keys_are_coerced_from_cli(stage, key, text, expected, typ):
    cfg = load(stage, None, [f"--{key}", text])
    got = value(cfg, key)
    assert isinstance(got, typ), f"{key}: {got!r} is {type(got).__name__}, expected {typ.__name__}"
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("stage,key", [("sft", "eval_split_size"), ("pretrain", "block_size"), ("tokenizer", "vocab_size"),
                                       ("sft", "sample_prompts")])
@pytest.mark.parametrize("where", ["yaml", "cli"])
def test_llmkit_own_numeric_keys_reject_words(tmp_path, stage, key, where):
    with pytest.raises(LlmkitError) as e:
        if where == "yaml":
            load(stage, f"{key}: lots\n", tmp_path=tmp_path)
        else:
            load(stage, None, [f"--{key}", "lots"])
    assert key in str(e.value)


def test_null_for_optional_key_from_cli():
    cfg = load("sft", None, ["--lora_target_modules", "null"])
    assert value(cfg, "lora_target_modules") is None
    cfg = load("sft", None, ["--output_dir", "none"])  # a str | None key: 'none' means None
    assert cfg.explicit["output_dir"] is None


def test_string_key_keeps_numeric_looking_text():
    cfg = load("sft", None, ["--output_dir", "123"])
    assert value(cfg, "output_dir") == "123"


def test_list_for_bool_key_is_rejected(tmp_path):
    with pytest.raises(LlmkitError, match="use_peft"):
        load("sft", "use_peft: [1, 2]\n", tmp_path=tmp_path)


def test_parse_overrides_forms():
    assert parse_overrides(["--a", "1", "--b-c=2", "--flag", "--d", "x"]) == {"a": "1", "b_c": "2", "flag": "true", "d": "x"}
    with pytest.raises(LlmkitError, match="stray"):
        parse_overrides(["stray"])


def test_negative_number_value_is_not_a_flag():
    cfg = load("sft", None, ["--learning_rate", "-1e-4", "--max_steps", "1"])
    assert value(cfg, "learning_rate") == pytest.approx(-1e-4)
    assert value(cfg, "max_steps") == 1


# --------------------------------------------------------------------------- unknown keys


def test_unknown_yaml_key_names_key_file_and_suggestion(tmp_path):
    with pytest.raises(LlmkitError) as e:
        load("sft", "max_steps: 1\nlearnig_rate: 1e-4\n", tmp_path=tmp_path)
    msg = str(e.value)
    assert "learnig_rate" in msg
    assert str(tmp_path / "sft.yaml") in msg
    assert "Did you mean" in msg and "learning_rate" in msg.split("Did you mean", 1)[1]


def test_unknown_cli_key_names_key_and_suggestion():
    with pytest.raises(LlmkitError) as e:
        load("sft", None, ["--lora_rr", "8"])
    msg = str(e.value)
    assert "lora_rr" in msg
    assert "command line" in msg
    assert "lora_r" in msg.split("Did you mean", 1)[1]


def test_unknown_key_without_close_match_still_named(tmp_path):
    with pytest.raises(LlmkitError) as e:
        load("tokenizer", "zzzqqq: 1\n", tmp_path=tmp_path)
    assert "zzzqqq" in str(e.value)
    assert "--help" in str(e.value)


def test_key_of_another_stage_is_unknown(tmp_path):
    # block_size belongs to pretrain, not tokenizer
    with pytest.raises(LlmkitError, match="block_size"):
        load("tokenizer", "block_size: 64\n", tmp_path=tmp_path)


def test_non_string_yaml_key_is_rejected(tmp_path):
    with pytest.raises(LlmkitError, match="unknown key '1'"):
        load("sft", "1: 2\n", tmp_path=tmp_path)


# --------------------------------------------------------------------------- YAML errors


def test_yaml_syntax_error_reports_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("max_steps: 1\nlearning_rate: 1e-4\ndatasets: [a.jsonl, b.jsonl\nlora_r: 4\n", encoding="utf-8")
    with pytest.raises(LlmkitError) as e:
        read_yaml(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "YAML syntax error" in msg
    m = re.search(r"line (\d+)", msg)
    assert m, msg
    assert int(m.group(1)) in (3, 4), msg  # the unclosed list (reported where the scanner notices)


def test_yaml_syntax_error_bad_indentation_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: 1\nb: 2\n  c: 3\n", encoding="utf-8")
    with pytest.raises(LlmkitError, match=r"line 3"):
        read_yaml(p)


def test_yaml_tab_error_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: 1\nb:\n\t- x\n", encoding="utf-8")
    with pytest.raises(LlmkitError, match=r"line 3"):
        read_yaml(p)


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_non_mapping_yaml_is_rejected(tmp_path, text, kind):
    p = tmp_path / "list.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(LlmkitError) as e:
        read_yaml(p)
    assert str(p) in str(e.value)
    assert "mapping" in str(e.value)
    assert kind in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(LlmkitError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_config_not_utf8(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("output_dir: años\n".encode("latin-1"))
    with pytest.raises(LlmkitError, match="UTF-8"):
        read_yaml(p)


# --------------------------------------------------------------------------- hash


def test_hash_is_stable_for_equal_configs(tmp_path):
    a = load("sft", "learning_rate: 1e-4\nmax_steps: 3\nuse_peft: true\n", tmp_path=tmp_path)
    b = load("sft", "learning_rate: 1e-4\nmax_steps: 3\nuse_peft: true\n", tmp_path=tmp_path)
    assert a.hash() == b.hash()
    assert a.hash() == a.hash()
    assert re.fullmatch(r"[0-9a-f]{16}", a.hash())


def test_hash_ignores_key_order_and_source(tmp_path):
    a = load("sft", "max_steps: 3\nlearning_rate: 1e-4\nuse_peft: true\n", tmp_path=tmp_path)
    b = load("sft", "use_peft: true\nlearning_rate: 0.0001\nmax_steps: 3\n", tmp_path=tmp_path)
    c = load("sft", None, ["--use_peft", "--learning_rate", "1e-4", "--max_steps", "3"])
    assert a.hash() == b.hash() == c.hash()


def test_hash_is_stable_across_processes(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "sft.yaml"
    p.write_text("learning_rate: 1e-4\nmax_steps: 3\nlora_target_modules: [q_proj, v_proj]\n", encoding="utf-8")
    code = f"from llmkit.cli import load_config_for; print(load_config_for('sft', {str(p)!r}, None)[1].hash())"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**__import__("os").environ, "PYTHONHASHSEED": s}).stdout.strip().splitlines()[-1]
        for s in ("1", "2")
    }
    assert len(outs) == 1
    assert load("sft", p.read_text(), tmp_path=tmp_path).hash() in outs


@pytest.mark.parametrize(
    "changed",
    ["learning_rate: 2e-4\nmax_steps: 3\n", "learning_rate: 1e-4\nmax_steps: 4\n", "learning_rate: 1e-4\nmax_steps: 3\nuse_peft: true\n"],
)
def test_hash_changes_when_a_value_changes(tmp_path, changed):
    base = load("sft", "learning_rate: 1e-4\nmax_steps: 3\n", tmp_path=tmp_path)
    other = load("sft", changed, tmp_path=tmp_path)
    assert base.hash() != other.hash()


def test_hash_changes_with_cli_override(tmp_path):
    a = load("sft", "learning_rate: 1e-4\n", tmp_path=tmp_path)
    b = load("sft", "learning_rate: 1e-4\n", ["--learning_rate", "3e-4"], tmp_path=tmp_path)
    assert a.hash() != b.hash()


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sft_help_lists_keys_with_defaults(capsys, flag):
    rc = llmkit("sft", flag)
    out = capsys.readouterr().out
    assert rc == 0
    assert "usage: llmkit sft" in out
    assert re.search(r"--lora_r \(default: 16\)", out), out
    assert re.search(r"--learning_rate \(default: 2e-05\)", out), out
    assert re.search(r"--assistant_only_loss \(default: False\)", out), out
    assert re.search(r"--datasets \(default: \[\]\)", out), out
    assert re.search(r"--use_peft \(default: False\)", out), out
    assert re.search(r"--model_name_or_path \(default: None\)", out), out


def test_help_lists_each_key_once(capsys):
    assert llmkit("sft", "--help") == 0
    out = capsys.readouterr().out
    keys = re.findall(r"^  --(\w+) \(default:", out, flags=re.M)
    assert len(keys) == len(set(keys))
    assert {"seed", "output_dir", "max_steps", "lora_alpha", "eval_split_size"} <= set(keys)


@pytest.mark.parametrize("stage,key", [("tokenizer", "vocab_size"), ("pretrain", "block_size")])
def test_other_stages_help(capsys, stage, key):
    assert llmkit(stage, "--help") == 0
    out = capsys.readouterr().out
    assert f"--{key} (default:" in out


def test_help_wins_over_bad_config(capsys, tmp_path):
    """--help prints help even when the rest of the command line is wrong."""
    assert llmkit("sft", "--config", tmp_path / "missing.yaml", "--nonsense", "1", "--help") == 0
    assert "--lora_r" in capsys.readouterr().out


# --------------------------------------------------------------------------- duplicate keys, numbers as written


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("learning_rate: 1e-4\nmax_steps: 3\noutput_dir: a\n\n\n\n\n\nlearning_rate: 2e-4\n", "learning_rate", "lines 1 and 9"),
        ("max_steps: 3\nmodel_config:\n  model_type: llama\n  hidden_size: 64\n  hidden_size: 32\n", "hidden_size", "lines 4 and 5"),
        ("datasets:\n  - {path: a.jsonl, weight: 1, weight: 2}\n", "weight", "both on line 2"),
    ],
)
def test_duplicate_yaml_key_names_both_lines(tmp_path, text, key, lines):
    p = tmp_path / "dup.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(LlmkitError) as e:
        read_yaml(p)
    assert str(e.value) == f"{p}: key '{key}' appears twice ({lines}); keep one"


def test_duplicate_key_from_the_cli_is_one_error_line(tmp_path, capsys):
    p = tmp_path / "sft.yaml"
    p.write_text("learning_rate: 1e-4\nmax_steps: 3\nlearning_rate: 2e-4\n", encoding="utf-8")
    assert llmkit("sft", "--config", p) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"llmkit: error: {p}: key 'learning_rate' appears twice (lines 1 and 3); keep one"


def test_merge_keys_may_be_overridden_and_equal_keys_in_sibling_mappings_are_fine(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("base: &b {lora_r: 8, lora_alpha: 16}\nmodel_config:\n  <<: *b\n  lora_r: 4\nother:\n  lora_r: 2\n", encoding="utf-8")
    assert read_yaml(p) == {"base": {"lora_r": 8, "lora_alpha": 16}, "model_config": {"lora_r": 4, "lora_alpha": 16},
                            "other": {"lora_r": 2}}


@pytest.mark.parametrize("where", ["yaml", "cli"])
def test_integers_stay_integers_in_the_saved_config(tmp_path, where):
    """warmup_steps is a float field in transformers (a fraction < 1 or a step count): the
    dataclass gets 10.0, config.yaml shows the user's 10; the hash is that of the typed values."""
    from llmkit import runs

    if where == "yaml":
        cfg = load("sft", "warmup_steps: 10\nlearning_rate: 1e-4\nmax_steps: 3\n", tmp_path=tmp_path)
    else:
        cfg = load("sft", None, ["--warmup_steps", "10", "--learning_rate", "1e-4", "--max_steps", "3"])
    assert value(cfg, "warmup_steps") == 10.0 and isinstance(value(cfg, "warmup_steps"), float)
    runs.write_configs(tmp_path, cfg)
    text = (tmp_path / "config.yaml").read_text()
    assert "warmup_steps: 10\n" in text and "learning_rate: 0.0001\n" in text and "max_steps: 3\n" in text, text
    resolved = (tmp_path / "config_resolved.yaml").read_text()
    assert "warmup_steps: 10\n" in resolved and "learning_rate: 0.0001\n" in resolved, resolved
    assert cfg.hash() == load("sft", None, ["--warmup_steps", "10.0", "--learning_rate", "1e-4", "--max_steps", "3"]).hash()


def test_a_float_the_user_wrote_stays_a_float(tmp_path):
    from llmkit import runs

    cfg = load("sft", "warmup_steps: 0.1\nlearning_rate: 1.0\n", tmp_path=tmp_path)
    runs.write_configs(tmp_path, cfg)
    text = (tmp_path / "config.yaml").read_text()
    assert "warmup_steps: 0.1\n" in text and "learning_rate: 1.0\n" in text, text


@pytest.mark.parametrize(("key", "bad", "close"), [("optim", "adamw_torh", "adamw_torch"), ("lr_scheduler_type", "cosin", "cosine"),
                                                   ("eval_strategy", "step", "steps")])
def test_enum_keys_are_checked_with_suggestions(tmp_path, key, bad, close):
    with pytest.raises(LlmkitError) as e:
        load("sft", f"{key}: {bad}\n", tmp_path=tmp_path)
    assert f"unknown {key} '{bad}'. Did you mean: {close}" in str(e.value)
    load("sft", f"{key}: {close}\n", tmp_path=tmp_path)
