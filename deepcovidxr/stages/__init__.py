"""The stage layer: one entry per script, keyed by the script's stem (also its config-file
section and the ``deepcovidxr STAGE`` name). Each entry holds the stage's config class and the
function that runs it (``run(config) -> StageResult``), imported only when the stage runs, so
that ``--help`` and config checks never import TensorFlow."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepcovidxr.config import audit_stages, data_stages, inference_stages, training_stages


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
        Stage("crop_img", data_stages.CropConfig, "deepcovidxr.stages.crop:run", "crop"),
        Stage("resize_img", data_stages.ResizeConfig, "deepcovidxr.stages.resize:run", "resize"),
        Stage("build_dataset", data_stages.DatasetConfig, "deepcovidxr.stages.build_dataset:run"),
        Stage("train_unet", data_stages.UnetTrainConfig, "deepcovidxr.stages.train_unet:run"),
        Stage("demo", data_stages.DemoConfig, "deepcovidxr.stages.demo:run"),
        Stage("pretrain", training_stages.PretrainConfig, "deepcovidxr.stages.pretrain:run"),
        Stage("tuner", training_stages.TuneConfig, "deepcovidxr.stages.tuner:run", "tune"),
        Stage("train", training_stages.TrainConfig, "deepcovidxr.stages.train:run"),
        Stage("train_all", training_stages.TrainAllConfig, "deepcovidxr.stages.train_all:run"),
        Stage("ensemble", inference_stages.EnsembleConfig, "deepcovidxr.stages.ensemble:run"),
        Stage("evaluate", inference_stages.EvaluateConfig, "deepcovidxr.stages.evaluate:run"),
        Stage("predict", inference_stages.PredictConfig, "deepcovidxr.stages.predict:run"),
        Stage("visSample", inference_stages.GradcamConfig, "deepcovidxr.stages.vis_sample:run", "gradcam"),
        Stage("export", inference_stages.ExportConfig, "deepcovidxr.stages.export:run"),
        Stage("audit", audit_stages.AuditConfig, "deepcovidxr.stages.audit:run"),
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
