"""Console entry points, one per stage (``[project.scripts]`` in pyproject.toml names them)."""

from deepcovidxr.cli import dispatch, entry

__all__ = ["dispatch"]

crop = entry("crop_img")
resize = entry("resize_img")
build_dataset = entry("build_dataset")
train_unet = entry("train_unet")
demo = entry("demo")
pretrain = entry("pretrain")
tune = entry("tuner")
train = entry("train")
train_all = entry("train_all")
ensemble = entry("ensemble")
evaluate = entry("evaluate")
predict = entry("predict")
gradcam = entry("visSample")
export = entry("export")
