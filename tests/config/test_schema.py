"""The config schema: generated parsers, --config files, precedence, run_config.json, exit codes."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from deepcovidxr import cli, stages
from deepcovidxr.config import data_stages, inference_stages, run_record, training_stages
from deepcovidxr.config import schema as config
from deepcovidxr.errors import MissingInputError, UsageError

ROOT = Path(__file__).resolve().parents[2]
STEMS = sorted(stages.STAGES)


def resolve(cls, stem: str, argv: list[str]):
    return config.resolve(cls, stem, argv, stages.STAGES)[0]


@pytest.mark.parametrize("stem", STEMS)
def test_every_script_help_is_instant_and_imports_no_tensorflow(stem: str) -> None:
    probe = (
        f"import sys, runpy; sys.argv = ['{stem}.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path('{stem}.py', run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    code = done.code\n"
        "print('TF' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'NO-TF', code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NO-TF 0"), done.stdout[-300:]
    assert "--config" in done.stdout and "not a medical device" in done.stdout


@pytest.mark.parametrize("stem", STEMS)
def test_every_field_is_an_option_with_help(stem: str) -> None:
    cls = stages.get(stem).config_class
    assert cls.__doc__ and "Example" in cls.__doc__
    for f in fields(cls):
        spec = f.metadata.get("option")
        assert spec is not None, f"{cls.__name__}.{f.name} has no flag"
        assert spec.help and any(flag.startswith("--") for flag in spec.flags)


def test_a_switch_says_it_is_off_by_default() -> None:
    """Regression: ``--no-cache`` read "(default: True)" (the field's value, not the flag's)."""
    text = " ".join(config.build_parser(stages.get("train").config_class).format_help().split())
    assert "do not cache decoded images in memory (default: off)" in text
    assert "(default: True)" not in text and "(default: False)" not in text


@pytest.mark.parametrize(
    ("stem", "argv", "field", "value"),
    [
        ("train", ["-w", "none"], "weights", "none"),
        ("train", ["--weight_path", "nih.h5"], "weights", "nih.h5"),
        ("train_all", ["--weight_path", "pre/"], "weights", "pre/"),
        ("pretrain", ["-model", "ResNet-50"], "model", "ResNet-50"),
        ("resize_img", ["--input_path", "."], "input", Path(".")),
        ("crop_img", ["--folder", "."], "input", Path(".")),
        ("predict", ["--ensemble_weight", "ensemble_weights.json"], "ensemble_weights", Path("ensemble_weights.json")),
        ("predict", ["-t"], "tta", 10),
        ("predict", ["--shard", "3/8"], "shard", (3, 8)),
        ("crop_img", ["--no-qc"], "qc_montage", False),
        ("crop_img", ["--precision", "bfloat16"], "precision", "bf16"),  # deprecated, still read
    ],
)
def test_the_original_spellings_parse(stem: str, argv: list[str], field: str, value) -> None:
    parser = config.build_parser(stages.get(stem).config_class)
    assert getattr(parser.parse_args(argv), field) == value


def test_only_explicit_flags_leave_the_parser() -> None:
    """Defaults are SUPPRESSed so a config file's value is not overwritten by a flag's default."""
    parser = config.build_parser(inference_stages.PredictConfig)
    assert vars(parser.parse_args(["-o", "out"])) == {"output": Path("out"), "verbose": 0}


def test_predict_config_file_with_a_flag_overriding_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "members").mkdir()
    (tmp_path / "other").mkdir()
    file = tmp_path / "run.yaml"
    file.write_text(
        "predict:\n"
        f"  weight: {tmp_path / 'members'}\n"
        f"  image: {tmp_path / 'images'}\n"
        "  output: out\n"
        "  batch-size: 4\n"  # dashes and underscores both accepted
        "  tta: 5\n"
        "  members: [res_224_crop, dense_331_uncrop]\n"
        "train:\n"
        "  epochs: 3\n",
        encoding="utf-8",
    )
    chosen = resolve(inference_stages.PredictConfig, "predict", ["--config", str(file), "-w", str(tmp_path / "other")])
    assert chosen.weights == tmp_path / "other"  # the flag wins
    assert chosen.input == tmp_path / "images" and chosen.output == Path("out")
    assert chosen.batch_size == 4 and chosen.tta == 5
    assert chosen.members == ("res_224_crop", "dense_331_uncrop")
    assert chosen.seed == 0  # untouched default


def test_json_config_and_the_field_names(tmp_path: Path) -> None:
    file = tmp_path / "run.json"
    file.write_text(
        json.dumps({"crop_img": {"folder": str(tmp_path), "output": "o", "qc_montage": False}}), encoding="utf-8"
    )
    chosen = resolve(data_stages.CropConfig, "crop_img", ["--config", str(file)])
    assert chosen.input == tmp_path and chosen.qc_montage is False
    file.write_text(json.dumps({"crop_img": {"folder": str(tmp_path), "output": "o", "no_qc": True}}), encoding="utf-8")
    assert resolve(data_stages.CropConfig, "crop_img", ["--config", str(file)]).qc_montage is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("predict:\n  batchsize: 4\n", "unknown key 'batchsize' in section 'predict'"),
        ("predcit:\n  tta: 4\n", "unknown section 'predcit'"),
        ("predict:\n  tta: many\n", "-t/--tta: expected int, got 'many'"),
        ("predict: [1, 2]\n", "section 'predict' must be a mapping"),
    ],
)
def test_config_file_mistakes_name_the_key_and_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as done:
        resolve(inference_stages.PredictConfig, "predict", ["--config", str(file), "-o", "x", "--merge", "a"])
    assert done.value.code == 2
    assert message in capsys.readouterr().err


def test_precedence_defaults_file_hyperparameters_flags(tmp_path: Path) -> None:
    data = tmp_path / "224" / "crop"
    data.mkdir(parents=True)
    hy = tmp_path / "hyperparameters.pickle"  # the original tuner's format
    hy.write_bytes(pickle.dumps({"learning_rate": 3e-4, "dropout_rate": 0.4}))
    file = tmp_path / "c.yaml"
    file.write_text(
        f"train:\n  model: ResNet-50\n  size: 224\n  path: {data}\n  output: o\n"
        f"  hyperparameters: {hy}\n  learning_rate: 0.1\n  momentum: 0.5\n  dropout: 0.1\n  epochs: 7\n",
        encoding="utf-8",
    )
    base = ["--config", str(file)]
    chosen = resolve(training_stages.TrainConfig, "train", base)
    # the hyperparameters file beats the config file; the file's own values fill the rest
    assert (chosen.learning_rate, chosen.dropout, chosen.momentum, chosen.epochs) == (3e-4, 0.4, 0.5, 7)
    # explicit flags beat both
    chosen = resolve(training_stages.TrainConfig, "train", [*base, "--learning-rate", "0.02", "--epochs", "9"])
    assert (chosen.learning_rate, chosen.dropout, chosen.epochs) == (0.02, 0.4, 9)
    # without a file: the dataclass defaults
    plain = resolve(training_stages.TrainConfig, "train", ["-m", "ResNet-50", "-s", "224", "-p", str(data), "-o", "o"])
    assert (plain.learning_rate, plain.epochs, plain.batch_size, plain.precision) == (None, 50, 16, "fp32")


def test_configs_check_values_whoever_builds_them(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--batch-size: must be at least 1"):
        data_stages.CropConfig(input=tmp_path, output=tmp_path / "o", batch_size=0)
    with pytest.raises(MissingInputError, match="nowhere"):
        data_stages.CropConfig(input=tmp_path / "nowhere", output=tmp_path / "o")
    with pytest.raises(UsageError, match="-f/--folder is required"):
        data_stages.CropConfig(output=tmp_path / "o")
    with pytest.raises(UsageError, match=r"--precision: 'half' is not accepted .*choose one of auto, fp32, bf16$"):
        data_stages.CropConfig(input=tmp_path, output=tmp_path / "o", precision="half")
    # library callers may pass text and lists: coerced to the declared types
    built = data_stages.DatasetConfig(
        images=str(tmp_path), labels=str(tmp_path), output="d", sizes=[224], fractions=[0.5, 0.25, 0.25]
    )
    assert built.images == tmp_path and built.sizes == (224,) and built.fractions == (0.5, 0.25, 0.25)


def test_one_default_per_option() -> None:
    """Shared options come from one declaration: the same default in every stage."""
    workers = {data_stages.CropConfig.__dataclass_fields__["workers"].default_factory() for _ in range(1)}
    for cls in (
        data_stages.ResizeConfig,
        data_stages.DatasetConfig,
        inference_stages.PredictConfig,
        data_stages.DemoConfig,
    ):
        workers.add(cls.__dataclass_fields__["workers"].default_factory())
    assert len(workers) == 1
    spellings = {
        tuple(cls.__dataclass_fields__["precision"].metadata["option"].flags)
        for cls in (
            data_stages.CropConfig,
            training_stages.TrainConfig,
            data_stages.UnetTrainConfig,
            training_stages.PretrainConfig,
        )
    }
    assert spellings == {("--precision",)}  # one flag for one idea
    # What each value means on this machine: tests/runtime/test_precision.py.
    assert data_stages.UnetTrainConfig(data=".").precision == "auto"
    assert training_stages.TrainConfig(model="ResNet-50", size=224, path=".", output="o").precision == "fp32"


def test_run_config_records_the_run_and_reads_back(tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "a.png").write_bytes(b"1234")
    (source / "sub" / "b.png").write_bytes(b"12")
    (source / ".DS_Store").write_bytes(b"junk")
    chosen = resolve(data_stages.CropConfig, "crop_img", ["-f", str(source), "-o", str(tmp_path / "out"), "--no-qc"])
    path = run_record.dump_run(chosen, "crop_img")
    record = json.loads(path.read_text(encoding="utf-8"))
    assert path == tmp_path / "out" / "run_config.json"
    assert record["crop_img"]["input"] == str(source) and record["crop_img"]["qc_montage"] is False
    run = record["_run"]
    assert run["input"]["files"] == 2 and len(run["input"]["sha256"]) == 64
    assert {"python", "deepcovidxr", "numpy"} <= set(run["versions"])
    assert "commit" in run
    # the fingerprint changes with the folder's content
    (source / "a.png").write_bytes(b"12345")
    assert run_record.fingerprint(source)["sha256"] != run["input"]["sha256"]
    # the record is a config file for the same stage: the run repeats with the same options
    again = resolve(data_stages.CropConfig, "crop_img", ["--config", str(path)])
    assert again == chosen


def test_unexpected_errors_exit_1_with_a_traceback_at_v(caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 10, defect 6): a ValueError from deep inside a library used to be exit 2
    without a traceback, even at -vv."""

    def library_bug() -> None:
        raise ValueError("Shapes (None, 7) and (None, 1) are incompatible")

    with caplog.at_level(logging.ERROR):
        assert cli.run_stage(library_bug) == 1
    assert "rerun with -v" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli.run_stage(library_bug, verbose=1) == 1
    assert any(r.exc_info for r in caplog.records)  # the traceback is logged


def test_our_usage_errors_exit_2_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    def refuse() -> None:
        raise UsageError("members disagree on their classes")

    with caplog.at_level(logging.ERROR):
        assert cli.run_stage(refuse) == 2
    assert caplog.messages == ["members disagree on their classes"]


def test_script_main_returns_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import crop_img

    assert crop_img.main(["--help"]) == 0
    assert crop_img.main(["-o", str(tmp_path)]) == 2
    assert "-f/--folder is required" in capsys.readouterr().err
    assert crop_img.main(["-f", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "missing does not exist" in capsys.readouterr().err


def test_dispatcher_lists_and_runs_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.dispatch(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(stage.stem in listing for stage in stages.STAGES.values())
    assert cli.dispatch(["nonsense"]) == 2
    assert cli.dispatch(["crop", "--help"]) == 0
    assert "--folder" in capsys.readouterr().out


def test_one_installed_command_runs_every_stage_by_its_script_stem(capsys) -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts == {"deepcovidxr": "deepcovidxr.cli:dispatch"}
    for stem in stages.STAGES:
        assert cli.dispatch([stem, "--help"]) == 0, stem
        assert f"usage: {stem}.py" in capsys.readouterr().out
