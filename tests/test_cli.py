from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lightning_automl
from lightning_automl.cli import build_cli
from lightning_automl.models import MLPClassifier

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["--version"])
    assert exit_info.value.code == 0
    assert lightning_automl.__version__ in capsys.readouterr().out


def test_fit_help_shows_trainer_model_and_data_options(capsys):
    with pytest.raises(SystemExit):
        build_cli(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--trainer.max_epochs" in out and "--model" in out and "--data" in out


def test_console_script_runs_as_a_module(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_automl", "--help"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "fit" in result.stdout


def test_console_script_fits_the_quickstart_and_exits_zero(repo_root, tmp_path):
    command = Path(sys.executable).with_name("lightning-automl")
    assert command.exists(), "install the package (make test does) to get the console script"
    result = subprocess.run(
        [
            str(command),
            "fit",
            "-c",
            "recipes/quickstart.yaml",
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "val/acc" in result.stdout and "val/loss" in result.stdout


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_runs_with_fast_dev_run(recipe, repo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo_root)  # recipes name data folders relative to the repository root
    cli = build_cli(
        [
            "fit",
            "-c",
            str(recipe),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1


def test_subclass_mode_takes_any_module_by_class_path(tmp_path):
    cli = build_cli(
        [
            "--model=tiny.TinyClassifier",
            "--model.lr=0.5",
            "--data=tiny.TinyDataModule",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    assert cli.model.hparams.lr == 0.5 and not isinstance(cli.model, MLPClassifier)


def test_bad_model_argument_is_refused_before_training():
    with pytest.raises(ValueError, match="dropout must be in"):
        MLPClassifier(dropout=1.5)
