"""Config schema, overrides, CLI behaviour (one-line errors, resolved config shown and saved)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from brainmri.cli import main
from brainmri.config import Config, config_to_yaml, load_config
from brainmri.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_file_matches_schema():
    on_disk = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert on_disk == yaml.safe_load(config_to_yaml(Config())), (
        "regenerate: brainmri config show > configs/default.yaml"
    )


@pytest.mark.parametrize("recipe", ["cpu-fast.yaml", "gpu-full.yaml", "default.yaml"])
def test_recipes_validate(recipe):
    load_config(ROOT / "configs" / recipe)


def test_overrides_are_typed_and_nested(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  stage2:\n    epochs: 3\n")
    cfg = load_config(f, ["train.stage2.lr=0.01", "model.weights=none", "evaluate.conformal_alphas=[0.2]"])
    assert cfg.train.stage2.epochs == 3 and cfg.train.stage2.lr == 0.01
    assert cfg.model.weights == "none" and cfg.evaluate.conformal_alphas == [0.2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.bogus=1"], "unknown key 'train.bogus'"),
        (["split.folds=abc"], "'split.folds'"),
        (["noequals"], "key=value"),
        (["model.backbone.x=1"], "model.backbone"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_yaml_file_is_a_config_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_prints_one_line_error_and_exit_2(capsys):
    assert main(["config", "show", "--set", "data.nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "data.nope" in err[0]


def test_cli_flag_becomes_config_override(capsys):
    assert main(["config", "show", "--set", "train.run_name=abc"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["run_name"] == "abc"


def test_every_command_has_help():
    from brainmri.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"data", "preprocess", "train", "evaluate", "kfold", "export", "predict", "pipeline"} <= set(sub.choices)
