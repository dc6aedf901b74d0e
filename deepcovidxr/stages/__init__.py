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
        Stage("crop_img", "CropConfig", "deepcovidxr.cropping:run_crop", "deepcovidxr-crop"),
        Stage("resize_img", "ResizeConfig", "deepcovidxr.resizing:run_resize", "deepcovidxr-resize"),
        Stage("build_dataset", "DatasetConfig", "deepcovidxr.dataset:run_build_dataset", "deepcovidxr-build-dataset"),
        Stage("train_unet", "UnetTrainConfig", "deepcovidxr.lungs.train:train_unet", "deepcovidxr-train-unet"),
        Stage("demo", "DemoConfig", "deepcovidxr.demo:run_demo", "deepcovidxr-demo"),
        Stage("pretrain", "PretrainConfig", "deepcovidxr.pretraining:run_pretrain", "deepcovidxr-pretrain"),
        Stage("tuner", "TuneConfig", "deepcovidxr.tuning:run_tuner", "deepcovidxr-tune"),
        Stage("train", "TrainConfig", "deepcovidxr.training:train", "deepcovidxr-train"),
        Stage("train_all", "TrainAllConfig", "deepcovidxr.training:train_all", "deepcovidxr-train-all"),
        Stage("ensemble", "EnsembleConfig", "deepcovidxr.inference:run_ensemble", "deepcovidxr-ensemble"),
        Stage("evaluate", "EvaluateConfig", "deepcovidxr.inference:run_evaluate", "deepcovidxr-evaluate"),
        Stage("predict", "PredictConfig", "deepcovidxr.inference:run_predict", "deepcovidxr-predict"),
        Stage("visSample", "GradcamConfig", "deepcovidxr.explain:run_gradcam", "deepcovidxr-gradcam"),
        Stage("export", "ExportConfig", "deepcovidxr.export:run_export", "deepcovidxr-export"),
    )
}


def get(stem: str) -> Stage:
    try:
        return STAGES[stem]
    except KeyError:
        raise KeyError(f"no stage {stem!r}; stages: {', '.join(STAGES)}") from None
