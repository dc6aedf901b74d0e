"""The one table of ensemble backbones. Nothing else in the package branches on architecture:
a new backbone is one new row (and the tests, parametrized over this table, cover it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from deepcovidxr.errors import UsageError


@dataclass(frozen=True)
class Backbone:
    name: str  # the CLI name, as in the original (-m DenseNet-121)
    constructor: str  # attribute of keras.applications
    min_size: int  # smallest input side keras.applications accepts
    gradcam_layer: str  # last convolutional activation (post-activation, spatial)
    prefix: str  # legacy weight-file prefix: <prefix>_<size>_up_<crop>.h5
    short: str  # member short name in the ensemble order: <short>_<size>_<crop>

    def build(self, size: int, weights: str | None = None, input_tensor=None):
        """keras.applications backbone without its top, on ``size`` x ``size`` x 3 input."""
        import keras

        if size < self.min_size:
            raise UsageError(f"{self.name} needs inputs of at least {self.min_size} px, got {size}")
        constructor = getattr(keras.applications, self.constructor)
        return constructor(include_top=False, weights=weights, input_shape=(size, size, 3), input_tensor=input_tensor)


# Order = the canonical ensemble order of the families (SPEC s.14).
BACKBONES: tuple[Backbone, ...] = (
    Backbone("DenseNet-121", "DenseNet121", 32, "relu", "DenseNet", "dense"),
    Backbone("ResNet-50", "ResNet50", 32, "conv5_block3_out", "ResNet50", "res"),
    Backbone("Inception-V3", "InceptionV3", 75, "mixed10", "Inception", "inception"),
    Backbone("Inception-ResNet-V2", "InceptionResNetV2", 75, "conv_7b_ac", "InceptionResNet", "inceptionresnet"),
    Backbone("Xception", "Xception", 71, "block14_sepconv2_act", "Xception", "xception"),
    Backbone("EfficientNet-B2", "EfficientNetB2", 32, "top_activation", "EfficientNet", "efficient"),
)

NAMES: tuple[str, ...] = tuple(b.name for b in BACKBONES)


def get(name: str) -> Backbone:
    """Look a backbone up by CLI name, legacy prefix or short name (any case); a typo gets the
    closest names suggested."""
    wanted = name.strip().lower()
    for backbone in BACKBONES:
        if wanted in {backbone.name.lower(), backbone.prefix.lower(), backbone.short, backbone.constructor.lower()}:
            return backbone
    close = difflib.get_close_matches(name, [*NAMES, *(b.prefix for b in BACKBONES)], n=3, cutoff=0.4)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UsageError(f"unknown backbone {name!r}{hint} Choose one of: {', '.join(NAMES)}")
