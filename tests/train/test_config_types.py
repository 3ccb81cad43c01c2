"""One typing of config values for every source: epic-train's options and environment
variables, --config YAML files, sweep grids and sweep.json (train/config.py field_types)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import train.cli
from epicdata.errors import EpicInputError, ExitCode
from epicslurm.sweep import load_grid
from train.cli import train_main
from train.config import TrainConfig, coerce_field, coerce_values, field_types, load_yaml_defaults

#: (field, value as YAML or JSON gives it, typed value or None when refused). An independent
#: table: what each field type must take and refuse, whichever source the value came from.
CASES = [
    ("lr", "5e-5", 5e-5),  # YAML 1.1 reads 5e-5 (no dot) as text
    ("lr", 1, 1.0),
    ("lr", 2.5e-5, 2.5e-5),
    ("lr", "abc", None),
    ("lr", True, None),
    ("lr", float("nan"), None),
    ("lr", "inf", None),
    ("epochs", 3, 3),
    ("epochs", "3", 3),
    ("epochs", 2.5, None),  # no silent truncation to 2
    ("epochs", 3.0, None),
    ("epochs", "2.5", None),
    ("epochs", "abc", None),
    ("epochs", True, None),
    ("epochs", None, None),
    ("limit_batches", None, None),
    ("limit_batches", 2, 2),
    ("deterministic", True, True),
    ("deterministic", "false", False),
    ("deterministic", "yes", True),
    ("deterministic", 1, None),
    ("scheduler", "cosine", "cosine"),
    ("scheduler", "linear", None),
    ("weights", "none", "none"),
    ("weights", "", None),
    ("weights", "x\n--lr=1", None),
    ("weights", 3, None),
    ("stage_dir", None, None),
]


@pytest.mark.parametrize(("name", "value", "typed"), CASES)
def test_each_field_type_takes_and_refuses_values(name, value, typed) -> None:
    refused = typed is None and not (value is None and field_types()[name].optional)
    if refused:
        with pytest.raises(EpicInputError, match=f"^src: {name}: expected .*, got ") as caught:
            coerce_field(name, value, source="src")
        assert repr(value) in str(caught.value)
        with pytest.raises(EpicInputError, match=f"config {name}: expected"):
            TrainConfig(store="s", annotations="a", output_dir="o", **{name: value})
        return
    out = coerce_field(name, value, source="src")
    assert out == typed and type(out) is type(typed)
    cfg = TrainConfig(store="s", annotations="a", output_dir="o", **{name: value})
    assert getattr(cfg, name) == typed and type(getattr(cfg, name)) is type(typed)


def test_the_messages_say_the_type_expected() -> None:
    with pytest.raises(EpicInputError) as caught:
        coerce_values({"epochs": 2, "lr": "abc"}, source="x.yaml")
    assert str(caught.value) == "x.yaml: lr: expected a number (float), got 'abc'"
    with pytest.raises(EpicInputError, match="x.yaml: epochs: expected an integer \\(int\\)"):
        coerce_values({"epochs": 2.5}, source="x.yaml")
    with pytest.raises(EpicInputError, match="x.yaml: unknown field\\(s\\) epoch, rate"):
        coerce_values({"rate": 1, "epoch": 2}, source="x.yaml")
    spec = field_types()
    assert spec["limit_batches"].expected == "an integer (int) or null"
    assert spec["amp"].expected == "one of auto, bf16, fp16, off"
    assert spec["deterministic"].expected == "true or false (bool)"


# ----------------------------------------------------------------------------- epic-train


@pytest.fixture
def folders(tmp_path: Path) -> list[str]:
    """epic-train's required options, on folders that exist (the command checks them)."""
    (tmp_path / "store").mkdir()
    (tmp_path / "ann").mkdir()
    return ["--store", str(tmp_path / "store"), "--annotations", str(tmp_path / "ann"),
            "--output-dir", str(tmp_path / "run")]  # fmt: skip


@pytest.fixture
def resolved(monkeypatch) -> list[TrainConfig]:
    """The configs epic-train resolves, given to a fit that trains nothing."""
    configs: list[TrainConfig] = []

    def fake_fit(cfg: TrainConfig, **_: object) -> int:
        configs.append(cfg)
        return 0

    monkeypatch.setattr(train.cli, "fit", fake_fit)
    return configs


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("batch_size: 2.5\n", "batch_size: expected an integer (int), got 2.5"),
        ("epochs: abc\n", "epochs: expected an integer (int), got 'abc'"),
        ("lr: fast\n", "lr: expected a number (float), got 'fast'"),
        ("deterministic: 1\n", "deterministic: expected true or false (bool), got 1"),
        ("amp: fp32\n", "amp: expected one of auto, bf16, fp16, off, got 'fp32'"),
        ("workers: null\n", "workers: expected an integer (int), got None"),
    ],
)
def test_a_mistyped_yaml_value_is_exit_2_naming_file_key_and_type(
    folders, resolved, tmp_path, text, needle
) -> None:
    # Regression: batch_size 2.5 and epochs abc passed --dry-run with exit 0.
    path = tmp_path / "defaults.yaml"
    path.write_text(text)
    result = CliRunner().invoke(train_main, [*folders, "--config", str(path), "--dry-run"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert f"error: --config {path}: {needle}" in result.output
    assert "Traceback" not in result.output and not resolved


def test_a_yaml_file_cannot_set_the_command_line_s_paths(folders, resolved, tmp_path) -> None:
    # Regression: `store:` in a --config file was a TypeError (exit 1).
    path = tmp_path / "defaults.yaml"
    path.write_text("store: /elsewhere\nannotations: /a\n")
    result = CliRunner().invoke(train_main, [*folders, "--config", str(path), "--dry-run"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "store, annotations cannot be set here; give --store, --annotations" in result.output


def test_yaml_values_are_typed_as_options_are(folders, resolved, tmp_path) -> None:
    path = tmp_path / "defaults.yaml"
    path.write_text("lr: 5e-5\nweight-decay: 0\ndeterministic: yes\nlimit_batches: null\n")
    assert load_yaml_defaults(path) == {
        "lr": 5e-5,
        "weight_decay": 0.0,
        "deterministic": True,
        "limit_batches": None,
    }
    result = CliRunner().invoke(train_main, [*folders, "--config", str(path), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    (cfg,) = resolved
    assert (cfg.lr, cfg.weight_decay, cfg.deterministic, cfg.epochs) == (5e-5, 0.0, True, 2)
    assert type(cfg.lr) is float and type(cfg.weight_decay) is float


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "abc"], "'--lr': expected a number (float), got 'abc'"),
        (["--lr", "nan"], "'--lr': expected a number (float), got 'nan'"),
        (["--epochs", "2.5"], "'--epochs': expected an integer (int), got '2.5'"),
        (["--seed", "x"], "'--seed': expected an integer (int), got 'x'"),
        (["--amp", "fp32"], "'--amp': expected one of auto, bf16, fp16, off, got 'fp32'"),
        (["--device", ""], "'--device': expected a one-line text (str), got ''"),
        (["--crop-size", "0"], "'--crop-size': 0 is not in the range x>=1"),
    ],
)
def test_a_mistyped_option_is_exit_2_naming_it_and_the_type(folders, resolved, args, needle):
    result = CliRunner().invoke(train_main, [*folders, *args, "--dry-run"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert needle in result.output and not resolved


def test_options_and_environment_are_typed(folders, resolved) -> None:
    args = [*folders, "--lr", "5e-5", "--limit-batches", "3", "--scheduler", "cosine"]
    result = CliRunner().invoke(train_main, args, env={"EPIC_WORKERS": "3"})
    assert result.exit_code == 0, result.output
    (cfg,) = resolved
    assert (cfg.lr, cfg.limit_batches, cfg.scheduler, cfg.workers) == (5e-5, 3, "cosine", 3)
    result = CliRunner().invoke(train_main, folders, env={"EPIC_WORKERS": "2.5"})
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "'--workers' (env var: 'EPIC_WORKERS'): expected an integer (int), got '2.5'" in (
        result.output
    )


def test_every_config_option_converts_with_the_shared_coercion() -> None:
    # Click's own FLOAT took 'nan' and its STRING took '': the options must type text exactly
    # as field_types() does (bounds aside, which click checks after it).
    samples = ["5e-5", "1", "2.5", "abc", "nan", "", "cosine", "linear", "auto", "-1", "7"]
    options = {p.name: p for p in train_main.params}
    for name, spec in field_types().items():
        if name in ("store", "annotations", "output_dir") or spec.kind is bool:
            continue
        option = options[name]
        for text in samples:
            try:
                expected = spec.parse(text)
            except ValueError:
                expected = None
            if expected is not None and spec.minimum is not None and expected < spec.minimum:
                continue
            try:
                got = option.type.convert(text, option, None)
            except Exception:  # click.BadParameter
                got = None
            assert got == expected and type(got) is type(expected), (name, text, got)


# ----------------------------------------------------------------------------- all sources


@pytest.mark.parametrize(
    ("name", "text"),
    [("lr", "5e-5"), ("lr", "1"), ("lr", "abc"), ("epochs", "2.5"), ("epochs", "abc"),
     ("epochs", "3"), ("scheduler", "cosine"), ("scheduler", "linear"), ("dropout", "0")],
)  # fmt: skip
def test_yaml_grid_and_option_agree(tmp_path, name, text) -> None:
    """The same text in a --config file, a sweep grid and on the command line: one value, or
    refused by all three."""
    yaml_file = tmp_path / "defaults.yaml"
    yaml_file.write_text(f"{name}: {text}\n")
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(f"seed: [0]\nfixed:\n  {name}: {text}\n")
    option = next(p for p in train_main.params if p.name == name)
    outcomes = []
    for read in (
        lambda: load_yaml_defaults(yaml_file)[name],
        lambda: load_grid(grid_file).fixed[name],
        lambda: option.type.convert(text, option, None),
    ):
        try:
            value = read()
        except Exception as exc:  # EpicInputError, click.BadParameter
            assert "expected" in str(exc), exc
            outcomes.append("refused")
        else:
            outcomes.append((value, type(value)))
    assert outcomes[0] == outcomes[1] == outcomes[2], outcomes


@pytest.mark.slow
def test_yaml_lr_5e_5_trains_with_the_float_not_the_text(
    mini_store, fast_options, tmp_path, monkeypatch
):
    # Regression: PyYAML reads `lr: 5e-5` as the string '5e-5', and the dry run died in the
    # optimizer (exit 1: '<=' not supported between instances of 'float' and 'str').
    path = tmp_path / "defaults.yaml"
    path.write_text("lr: 5e-5\n")
    args = ["--store", str(mini_store.store), "--annotations", str(mini_store.annotations)]
    args += ["--output-dir", str(tmp_path / "run"), "--config", str(path), "--dry-run"]
    for key, value in fast_options.items():
        flag = "--" + key.replace("_", "-")
        if key != "lr":
            args += [flag] if value is True else [flag, str(value)]
    configs = []
    real_fit = train.cli.fit

    def fit(cfg: TrainConfig, **kwargs: object) -> int:
        configs.append(cfg)
        return real_fit(cfg, **kwargs)

    monkeypatch.setattr(train.cli, "fit", fit)
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    assert configs[0].lr == 5e-5 and type(configs[0].lr) is float
