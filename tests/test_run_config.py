"""Where a run's configuration comes from: command line > config file > (--init-from bundle) >
sized for the graph > dataclass default; the TOML config file, --print-config, --no-sizing."""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path

import pytest

from model.bundle.format import read_manifest
from model.config import HelpFormatter, add_arguments, explicit_arguments, from_arguments
from model.network.imf import IMFConfig
from model.training import sizing
from model.training.config import TrainConfig
from model.training.run_config import ConfigError, read_config_file, resolve

FAKE_SIZED = {"dim": 12, "relation_dim": 6, "batch_size": 8, "lr": 0.02, "input_dropout": 0.1, "max_minutes": 7.5}


@pytest.fixture()
def fake_sizing(monkeypatch) -> dict:
    """Sizing that returns FAKE_SIZED whatever the graph (the real rule lives in
    model/training/sizing.py and has its own tests)."""
    calls: list[tuple[int, int, int]] = []

    def sized(n: int, r: int, t: int) -> dict[str, object]:
        calls.append((n, r, t))
        return dict(FAKE_SIZED)

    monkeypatch.setattr(sizing, "sized_settings", sized)
    monkeypatch.setattr(sizing, "describe_graph", lambda n, r, t: f"{n} entities")
    return {"calls": calls}


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from model.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- explicit options


def test_the_parser_tells_given_options_from_defaults() -> None:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_arguments(parser, TrainConfig, mark_defaults=True)
    add_arguments(parser, IMFConfig, mark_defaults=True)
    args = parser.parse_args(["--epochs", "50", "--no-residual", "--per-query", "--valid-subset", "none"])
    # --epochs 50 is the default's value, and still counts as given.
    assert explicit_arguments(TrainConfig, args) == {"epochs": 50, "per_answer": False, "valid_subset": None}
    assert explicit_arguments(IMFConfig, args) == {"feature_residual": False}
    cfg = from_arguments(TrainConfig, args, dataset="x")
    assert cfg.epochs == 50 and cfg.lr == TrainConfig().lr and cfg.valid_subset is None
    assert from_arguments(IMFConfig, args) == IMFConfig(feature_residual=False)
    assert "(default: 0.001)" in parser.format_help()  # the help still shows the defaults


# ----------------------------------------------------------------------------- the config file


def test_config_file_sections_and_top_level_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "run.toml", """
# comments are fine
epochs = 7                 # top level: the names are unique across the two sections
[training]
lr = 1                     # an integer where a float is expected
valid_subset = "none"
modalities = ["text"]
loss = "bce"
per_answer = false
[model]
dim = 16
feature_residual = false
""")
    assert read_config_file(path) == {
        "epochs": 7, "lr": 1.0, "valid_subset": None, "modalities": ["text"], "loss": "bce", "per_answer": False,
        "dim": 16, "feature_residual": False,
    }
    assert isinstance(read_config_file(path)["lr"], float)


@pytest.mark.parametrize(("text", "message"), [
    ("[training]\nepochs = 3\nlearning_rate = 0.1\n", r"run\.toml:3: unknown key 'learning_rate' in \[training\]"),
    ("[training]\nbatchsize = 3\n", r"run\.toml:2: unknown key 'batchsize'.*did you mean 'batch_size'"),
    ("dimm = 3\n", r"run\.toml:1: unknown key 'dimm'; did you mean 'dim'"),
    ("[trainig]\nepochs = 3\n", r"unknown section \[trainig\].*did you mean 'training'"),
    ("[training]\ndim = 3\n", r"run\.toml:2: 'dim' belongs under \[model\], not \[training\]"),
    ("[training]\n\nepochs = \"5\"\n", r"run\.toml:3: epochs \(--epochs\): expected an integer, got a string \('5'\)"),
    ("[training]\nepochs = 0\n", r"run\.toml:2: epochs \(--epochs\): must be >= 1, got 0"),
    ("[model]\ninput_dropout = 1.5\n", r"run\.toml:2: input_dropout \(--input-dropout\): must be in \[0, 1\)"),
    ("[model]\nfeature_residual = 1\n", r"feature_residual \(--no-residual\): expected true or false, got an integer"),
    ("[training]\nloss = \"mse\"\n", r"loss \(--loss\): 'mse' is not one of 'ce', 'bce'"),
    ("[training]\nthreads = \"none\"\n", r"threads \(--threads\): expected an integer; \"none\" is not a value of this option"),
    ("[training]\nepochs = \n", r"run\.toml: not valid TOML: .*line 2"),
    ("epochs = 3\n[training]\nepochs = 4\n", r"run\.toml:3: 'epochs' is set twice"),
])
def test_config_file_errors_name_the_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_config_file(_write(tmp_path / "run.toml", text))


def test_a_missing_config_file_is_one_line(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    code, _, err = _cli(["train", "--dataset", str(tiny_dataset), "--config", str(tmp_path / "nope.toml"), "--print-config"], capsys)
    assert code == 2 and err.strip() == f"imf train: error: {tmp_path / 'nope.toml'}: no such config file"


# ----------------------------------------------------------------------------- precedence


def test_precedence_flag_config_sized_default() -> None:
    r = resolve(
        flags={"dataset": "d", "lr": 0.5},
        file={"lr": 0.4, "batch_size": 16, "dim": 20},
        sized=FAKE_SIZED,
    )
    assert r.train.lr == 0.5 and r.sources["lr"] == "flag"
    assert r.train.batch_size == 16 and r.sources["batch_size"] == "config"
    assert r.model.input_dropout == 0.1 and r.sources["input_dropout"] == "sized"
    assert r.train.max_minutes == 7.5 and r.sources["max_minutes"] == "sized"
    assert r.train.patience == TrainConfig().patience and r.sources["patience"] == "default"
    # relation_dim is relative to dim: a given dim is not paired with the sized relation_dim.
    assert r.model.dim == 20 and r.model.relation_dim == 20 and r.sources["relation_dim"] == "default"
    r2 = resolve(flags={"dataset": "d"}, sized=FAKE_SIZED)
    assert (r2.model.dim, r2.model.relation_dim) == (12, 6) and r2.sources["relation_dim"] == "sized"


def test_invalid_combinations_name_where_the_values_came_from(tmp_path: Path) -> None:
    from model.errors import IMFError

    with pytest.raises(IMFError, match=r"per_answer=True \(per_answer from the command line\)"):
        resolve(flags={"dataset": "d", "per_answer": True}, file={"loss": "bce"}, file_name="run.toml")
    with pytest.raises(IMFError, match=r"--dataset is required \(or dataset = \.\.\. in a --config file\)"):
        resolve(flags={}, require=("dataset",))


def test_print_config_round_trips_with_sources(tiny_dataset: Path, tmp_path: Path, fake_sizing: dict, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)
    conf = _write(tmp_path / "run.toml", "[training]\nbatch_size = 5\nvalid_subset = \"none\"\n[model]\nfusion_rank = 3\n")
    code, out, err = _cli(["train", "--dataset", str(tiny_dataset), "--config", str(conf), "--epochs", "9", "--print-config"], capsys)
    assert code == 0, err
    assert fake_sizing["calls"] == [(6, 2, 6)]  # the tiny graph: 6 entities, 2 relations, 6 training triples
    # The sizing's own line, then the sized values actually used (batch_size came from the file).
    assert "sized for 6 entities" in caplog.text
    assert "sized for 6 entities: lr 0.02, max_minutes 7.5, dim 12, relation_dim 6, input_dropout 0.1 (the rule" in caplog.text
    lines = out.splitlines()
    assert "epochs = 9  # flag" in lines and "batch_size = 5  # config" in lines and 'valid_subset = "none"  # config' in lines
    assert "lr = 0.02  # sized" in lines and "dim = 12  # sized" in lines and "relation_dim = 6  # sized" in lines
    assert "patience = 5  # default" in lines and "# threads is unset  # default" in lines
    parsed = tomllib.loads(out)
    assert parsed["training"]["epochs"] == 9 and parsed["model"]["fusion_rank"] == 3 and "threads" not in parsed["training"]
    assert not (tmp_path / "run").exists()  # nothing trained
    # Fed back, the same values (now all from the file), sized or not.
    again = _write(tmp_path / "again.toml", out)
    code, out2, err = _cli(["train", "--config", str(again), "--print-config", "--no-sizing"], capsys)
    assert code == 0, err
    values = lambda text: {ln.split("  #")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert values(out2) == values(out)
    assert "# config" in out2 and "# sized" not in out2 and "# flag" not in out2


def test_no_sizing_keeps_the_dataclass_defaults(tiny_dataset: Path, fake_sizing: dict, capsys) -> None:
    code, out, err = _cli(["train", "--dataset", str(tiny_dataset), "--print-config", "--no-sizing"], capsys)
    assert code == 0, err
    parsed = tomllib.loads(out)
    assert parsed["model"]["dim"] == IMFConfig().dim and parsed["training"]["lr"] == TrainConfig().lr
    assert fake_sizing["calls"] == [] and "# sized" not in out


def test_cli_training_records_the_resolved_configuration(tiny_dataset: Path, tmp_path: Path, fake_sizing: dict, capsys) -> None:
    """A run's manifest and run directory keep each value and its source; --init-from then takes
    the model options from that bundle unless given again (dropouts may change)."""
    conf = _write(tmp_path / "run.toml", "[training]\nepochs = 2\nvalid_subset = \"none\"\n")
    first = tmp_path / "first"
    code, _, err = _cli(["train", "--dataset", str(tiny_dataset), "--out", str(first), "--config", str(conf), "--dim", "6",
                         "--no-extras", "--quiet"], capsys)
    assert code == 0, err
    tr = read_manifest(first)["training"]
    assert tr["sources"]["dim"] == "flag" and tr["sources"]["epochs"] == "config" and tr["sources"]["lr"] == "sized"
    assert tr["sources"]["patience"] == "default" and tr["lr"] == 0.02 and tr["valid_subset"] is None and tr["max_minutes"] == 7.5
    assert tr["model"]["dim"] == 6 and tr["model"]["relation_dim"] == 6 and tr["model"]["input_dropout"] == 0.1
    stored = tomllib.loads((tmp_path / "first.run" / "config.toml").read_text())
    assert stored["model"]["dim"] == 6 and stored["training"]["lr"] == 0.02

    second = tmp_path / "second"
    code, _, err = _cli(["train", "--dataset", str(tiny_dataset), "--out", str(second), "--init-from", str(first), "--epochs", "3",
                         "--input-dropout", "0.05", "--no-extras", "--quiet"], capsys)
    assert code == 0, err  # no "model configuration differs": dim 6 comes from the bundle
    m = read_manifest(second)
    assert m["model_config"]["dim"] == 6 and m["model_config"]["relation_dim"] == 6 and m["model_config"]["input_dropout"] == 0.05
    src = m["training"]["sources"]
    assert src["dim"] == "bundle" and src["hidden_dropout1"] == "bundle" and src["input_dropout"] == "flag"
    assert [h["epoch"] for h in m["training"]["history"]] == [1, 2, 3]
    # A model option that the bundle cannot continue with is still refused, naming it.
    code, _, err = _cli(["train", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "third"), "--init-from", str(first), "--dim", "7",
                         "--epochs", "3", "--no-extras", "--quiet"], capsys)
    assert code == 2 and "dim 6 vs 7" in err


def test_dataset_and_out_are_required(tiny_dataset: Path, capsys) -> None:
    code, _, err = _cli(["train", "--out", "x", "--no-sizing"], capsys)
    assert code == 2 and "--dataset is required (or dataset = ... in a --config file)" in err
    code, _, err = _cli(["train", "--dataset", str(tiny_dataset)], capsys)
    assert code == 2 and "--out is required" in err


def test_version(capsys) -> None:
    from model import __version__
    from model.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"imf {__version__}"
