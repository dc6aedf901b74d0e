"""The stage layer: one entry per script, keyed by the script's stem (also its config-file
section and the ``deepcovidxr STAGE`` name). Each entry holds the stage's config class and the
function that runs it (``run(config) -> StageResult``), imported only when the stage runs, so
that ``--help`` and config checks never import TensorFlow."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepcovidxr.config import stages as configs


@dataclass(frozen=True)
class Stage:
    stem: str  # the script's name without .py; the config-file section; `deepcovidxr STAGE`
    config_class: type  # the stage's frozen config dataclass
    runner: str  # "module:function", imported when the stage runs
    alias: str = ""  # a short name `deepcovidxr ALIAS` also accepts

    def run_function(self) -> Callable[[Any], Any]:
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    s.stem: s
    for s in (
        Stage("crop_img", configs.CropConfig, "deepcovidxr.stages.crop:run", "crop"),
        Stage("resize_img", configs.ResizeConfig, "deepcovidxr.stages.resize:run", "resize"),
        Stage("build_dataset", configs.DatasetConfig, "deepcovidxr.stages.build_dataset:run"),
        Stage("train_unet", configs.UnetTrainConfig, "deepcovidxr.stages.train_unet:run"),
        Stage("demo", configs.DemoConfig, "deepcovidxr.stages.demo:run"),
        Stage("pretrain", configs.PretrainConfig, "deepcovidxr.stages.pretrain:run"),
        Stage("tuner", configs.TuneConfig, "deepcovidxr.stages.tuner:run", "tune"),
        Stage("train", configs.TrainConfig, "deepcovidxr.stages.train:run"),
        Stage("train_all", configs.TrainAllConfig, "deepcovidxr.stages.train_all:run"),
        Stage("ensemble", configs.EnsembleConfig, "deepcovidxr.stages.ensemble:run"),
        Stage("evaluate", configs.EvaluateConfig, "deepcovidxr.stages.evaluate:run"),
        Stage("predict", configs.PredictConfig, "deepcovidxr.stages.predict:run"),
        Stage("visSample", configs.GradcamConfig, "deepcovidxr.stages.vis_sample:run", "gradcam"),
        Stage("export", configs.ExportConfig, "deepcovidxr.stages.export:run"),
    )
}


def names() -> dict[str, str]:
    """Every name ``deepcovidxr STAGE`` accepts (stems and aliases) -> the stage's stem."""
    accepted = {s.alias: s.stem for s in STAGES.values() if s.alias}
    accepted.update({stem: stem for stem in STAGES})
    return accepted


def get(stem: str) -> Stage:
    try:
        return STAGES[names()[stem]]
    except KeyError:
        raise KeyError(f"no stage {stem!r}; stages: {', '.join(STAGES)}") from None
