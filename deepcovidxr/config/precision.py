"""One precision vocabulary for every stage, and which values each kind of stage accepts.

``--precision`` takes ``auto | fp32 | bf16 | fp16 | int8`` everywhere. What a value means on the
machine (``auto`` by the hardware, the Keras dtype policy, the engine's precision, the U-Net's) is
resolved once, in :mod:`deepcovidxr.runtime.precision`; this module only spells and checks, so
``--help`` and config files stay free of TensorFlow and numpy.

Three kinds of stage take the flag:

* ``training`` (train, train_all, pretrain, train_unet): auto, fp32, bf16, fp16 (Keras mixed
  precision: mixed_bfloat16 or mixed_float16, weights kept float32).
* ``unet`` (crop_img, build_dataset, visSample: the lung U-Net on Keras): auto, fp32, bf16.
* ``engine`` (predict, evaluate, ensemble: the members on keras/onnxruntime/openvino, the U-Net
  following them): auto, fp32, bf16, int8.

Old spellings keep working with a DeprecationWarning and a log warning naming the new one:
``float32`` -> fp32, ``bfloat16`` -> bf16, and ``mixed``, which meant the device's half type
(training: mixed_float16 on a GPU, mixed_bfloat16 on a CPU; the U-Net and the engines:
bf16) -> ``auto`` for training (the same on a GPU or a CPU with native bf16; where bf16 is
emulated, about 3.7x slower than fp32, auto now stays fp32: say bf16 to force it) and ``bf16``
for the others (exactly what it meant there).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
TRAINING, UNET, ENGINE = "training", "unet", "engine"
KINDS: tuple[str, ...] = (TRAINING, UNET, ENGINE)

STAGES: dict[str, str] = {
    TRAINING: "the training stages (train, train_all, pretrain, train_unet)",
    UNET: "the U-Net stages (crop_img, build_dataset, visSample)",
    ENGINE: "the engine stages (predict, evaluate, ensemble)",
}
ACCEPTED: dict[str, tuple[str, ...]] = {
    TRAINING: ("auto", "fp32", "bf16", "fp16"),
    UNET: ("auto", "fp32", "bf16"),
    ENGINE: ("auto", "fp32", "bf16", "int8"),
}
# Why a kind refuses a value of the vocabulary: the refusal says what to do instead.
REFUSED: dict[tuple[str, str], str] = {
    (TRAINING, "int8"): "int8 is an inference precision (post-training quantisation of the members)",
    (UNET, "fp16"): "the lung U-Net runs fp32 or bf16 (it was trained in mixed bfloat16)",
    (UNET, "int8"): "the lung U-Net is not quantised; int8 applies to the members (predict, evaluate, ensemble)",
    (ENGINE, "fp16"): "no engine here runs fp16 on a CPU (ONNX Runtime's CPU provider has no fp16 "
    "convolutions, Keras members run fp32); bf16 is the reduced float precision of openvino",
}
# Old spelling -> new, per kind (``mixed`` meant a different thing in training than elsewhere).
OLD_SPELLINGS: dict[str, dict[str, str]] = {
    "float32": {TRAINING: "fp32", UNET: "fp32", ENGINE: "fp32"},
    "bfloat16": {TRAINING: "bf16", UNET: "bf16", ENGINE: "bf16"},
    "mixed": {TRAINING: "auto", UNET: "bf16", ENGINE: "bf16"},
}


def accepted(kind: str) -> tuple[str, ...]:
    if kind not in ACCEPTED:
        raise ValueError(f"unknown stage kind {kind!r}; one of {', '.join(KINDS)}")
    return ACCEPTED[kind]


def spelled(value: str, kind: str) -> str:
    """``value`` in the vocabulary for a stage of ``kind``: an old spelling is translated (with a
    DeprecationWarning and a log warning), a value the kind does not accept is a ValueError
    naming the accepted ones (the schema reports it as a UsageError naming the flag)."""
    choices = accepted(kind)
    text = str(value).strip().lower()
    if text in OLD_SPELLINGS:
        new = OLD_SPELLINGS[text][kind]
        message = f"--precision {text} is an old spelling; say --precision {new}"
        if text == "mixed" and kind == TRAINING:
            message += " (mixed precision where it pays; bf16 forces mixed bfloat16 on any CPU)"
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        log.warning("%s", message)
        text = new
    if text not in choices:
        reason = REFUSED.get((kind, text))
        why = f" ({reason})" if reason else ""
        raise ValueError(f"{value!r} is not accepted by {STAGES[kind]}{why}; choose one of {', '.join(choices)}")
    return text


def parser(kind: str) -> Callable[[str], str]:
    """The ``parse`` of a stage's ``--precision`` option (:func:`spelled` for ``kind``)."""
    accepted(kind)

    def parse(text: str) -> str:
        return spelled(text, kind)

    parse.__name__ = f"{kind}_precision"
    return parse


def flag_help(kind: str) -> str:
    """The part of ``--help`` every ``--precision`` shares: the old spellings it still reads."""
    olds = ", ".join(f"{old} = {news[kind]}" for old, news in OLD_SPELLINGS.items())
    return f"Old spellings (deprecated): {olds}"


__all__ = [
    "ACCEPTED",
    "ENGINE",
    "KINDS",
    "PRECISIONS",
    "STAGES",
    "TRAINING",
    "UNET",
    "accepted",
    "flag_help",
    "parser",
    "spelled",
]
