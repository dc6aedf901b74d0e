"""The stage layer: one entry per script, keyed by the script's stem (also its config-file
section). Each entry names the stage's config class in :mod:`deepcovidxr.configs` and the
function that runs it (``run(config) -> result``), imported only when the stage runs, so that
``--help`` and config checks never import TensorFlow."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    stem: str  # the script's name without .py; the config-file section
    config: str  # class name in deepcovidxr.configs
    runner: str  # "module:function"
    command: str  # the console entry point installed with the package

    def config_class(self) -> type:
        from deepcovidxr import configs

        return getattr(configs, self.config)

    def run_function(self) -> Callable[[Any], Any]:
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)


STAGES: dict[str, Stage] = {
    s.stem: s
    for s in (
        Stage("crop_img", "CropConfig", "deepcovidxr.stages.crop:run", "deepcovidxr-crop"),
        Stage("resize_img", "ResizeConfig", "deepcovidxr.stages.resize:run", "deepcovidxr-resize"),
        Stage("build_dataset", "DatasetConfig", "deepcovidxr.stages.build_dataset:run", "deepcovidxr-build-dataset"),
        Stage("train_unet", "UnetTrainConfig", "deepcovidxr.stages.train_unet:run", "deepcovidxr-train-unet"),
        Stage("demo", "DemoConfig", "deepcovidxr.stages.demo:run", "deepcovidxr-demo"),
        Stage("pretrain", "PretrainConfig", "deepcovidxr.stages.pretrain:run", "deepcovidxr-pretrain"),
        Stage("tuner", "TuneConfig", "deepcovidxr.stages.tuner:run", "deepcovidxr-tune"),
        Stage("train", "TrainConfig", "deepcovidxr.stages.train:run", "deepcovidxr-train"),
        Stage("train_all", "TrainAllConfig", "deepcovidxr.stages.train_all:run", "deepcovidxr-train-all"),
        Stage("ensemble", "EnsembleConfig", "deepcovidxr.stages.ensemble:run", "deepcovidxr-ensemble"),
        Stage("evaluate", "EvaluateConfig", "deepcovidxr.stages.evaluate:run", "deepcovidxr-evaluate"),
        Stage("predict", "PredictConfig", "deepcovidxr.stages.predict:run", "deepcovidxr-predict"),
        Stage("visSample", "GradcamConfig", "deepcovidxr.stages.vis_sample:run", "deepcovidxr-gradcam"),
        Stage("export", "ExportConfig", "deepcovidxr.stages.export:run", "deepcovidxr-export"),
    )
}


def get(stem: str) -> Stage:
    try:
        return STAGES[stem]
    except KeyError:
        raise KeyError(f"no stage {stem!r}; stages: {', '.join(STAGES)}") from None
