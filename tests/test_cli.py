"""The `sonopacs` command's own behaviour: argument forms from the contract, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from sonopacs.cli import build_parser, main


def test_train_takes_its_recipe_with_dash_dash_config() -> None:
    args = build_parser().parse_args(["train", "--config", "models/configs/x.yaml"])
    assert args.train_config == "models/configs/x.yaml"


def test_settings_file_is_accepted_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    assert parser.parse_args(["--config", "a.yaml", "serve"]).config == "a.yaml"
    assert parser.parse_args(["listener", "--config", "b.yaml"]).config == "b.yaml"
    assert parser.parse_args(["db", "upgrade", "--config", "c.yaml"]).config == "c.yaml"


@pytest.mark.parametrize("command", ["resend", "reprocess"])
def test_unknown_study_is_refused_with_a_message_not_a_traceback(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SONOPACS_DATABASE__URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("SONOPACS_STORAGE__ROOT", str(tmp_path / "storage"))
    assert main(["db", "upgrade"]) == 0
    assert main([command, "1.2.3.4.5.6.7"]) == 1
    err = capsys.readouterr().err
    assert f"{command} refused" in err and "1.2.3.4.5.6.7" in err


def test_train_overrides_are_applied_and_recorded(tmp_path: Path) -> None:
    """`--set` is how a time-budgeted GPU run's epoch count is repeated anywhere."""
    import csv
    import json

    from tests.test_models_training import make_synthetic_index, write_smoke_config

    cfg = write_smoke_config(tmp_path, make_synthetic_index(tmp_path / "data"))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--device", "cpu",
                 "--set", "train.epochs=1"]) == 0
    assert len(list(csv.DictReader((out / "jobs" / "final" / "log.csv").open()))) == 1  # config says 2
    assert json.loads((out / "weights" / "model.json").read_text())["overrides"] == ["train.epochs=1"]
