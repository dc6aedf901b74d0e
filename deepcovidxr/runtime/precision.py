"""What a ``--precision`` means on this machine, resolved once into a :class:`Policy` that training,
the lung U-Net, the engines and the engine cache all read (nobody else interprets the text).

The vocabulary and which values each kind of stage accepts: :mod:`deepcovidxr.config.precision`.
``auto`` is resolved by the hardware (:mod:`deepcovidxr.runtime.hardware`):

* training: fp16 (mixed_float16) on a GPU, bf16 (mixed_bfloat16) on a CPU with native bf16
  (avx512_bf16/AMX), else fp32: mixed precision only where it pays.
* the U-Net (on Keras or OpenVINO) and the members on OpenVINO: bf16 on a CPU with native bf16,
  else fp32; the members on Keras or ONNX Runtime: fp32 (int8 is never chosen: it needs
  calibration images).

When the members run on an engine (``engine`` kind) the U-Net that crops their input follows at
fp32 or bf16; with ``auto`` or ``int8`` it takes its own ``auto`` on that engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepcovidxr.config.precision import ENGINE, TRAINING, UNET, spelled
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime import hardware

# Keras dtype policy of each precision (weights stay float32 under a mixed policy). int8 is the
# engine's quantisation; whatever runs on Keras beside it runs float32.
KERAS_DTYPE: dict[str, str] = {
    "fp32": "float32",
    "bf16": "mixed_bfloat16",
    "fp16": "mixed_float16",
    "int8": "float32",
}
# Engines with bf16 kernels on a CPU that has them, for the members and for the U-Net. Keras runs
# the U-Net in mixed bfloat16 (it was trained so) but the members as saved, in float32.
_BF16_ENGINES = {ENGINE: ("openvino",), UNET: ("keras", "openvino")}


@dataclass(frozen=True)
class Policy:
    """One resolved precision. ``name``: what runs (fp32 | bf16 | fp16 | int8); ``requested``: the
    value asked for (``auto`` kept, so a log or a record can say both); ``kind``: training | unet |
    engine; ``engine``: keras | onnxruntime | openvino (training: keras).

    ``keras_dtype_policy``: Keras' dtype policy for what runs on Keras (training; the U-Net on
    Keras). ``engine_precision``: what the engine runs the models at (fp32 | bf16 | int8).
    ``unet_precision``: the U-Net's (fp32 | bf16) when it crops for these members.
    ``cache_key``: the precision of the cached artifact, part of the engine cache key: fp32 for fp32
    and bf16 (bf16 is OpenVINO's compile hint on the fp32 IR: nothing is exported twice), int8 for
    int8 (its own quantised export)."""

    name: str
    requested: str
    kind: str
    engine: str
    keras_dtype_policy: str
    engine_precision: str
    unet_precision: str
    cache_key: str

    @property
    def mixed(self) -> bool:
        """Keras computes in a half type (weights float32): what training records call mixed precision."""
        return self.keras_dtype_policy != "float32"

    @property
    def unet_dtype(self) -> str:
        """The U-Net's Keras dtype policy."""
        return KERAS_DTYPE[self.unet_precision]

    def unet(self) -> Policy:
        """The U-Net's own policy on this engine (itself for a ``unet`` policy)."""
        if self.kind == UNET:
            return self
        return _policy(self.unet_precision, self.unet_precision, UNET, self.engine, self.unet_precision)

    def __str__(self) -> str:
        return self.name if self.requested == self.name else f"{self.name} ({self.requested})"


def _auto(kind: str, engine: str) -> str:
    if kind == TRAINING:
        if hardware.gpu_available():
            return "fp16"
        return "bf16" if hardware.cpu_supports_bf16() else "fp32"
    if engine in _BF16_ENGINES[kind] and hardware.cpu_supports_bf16():
        return "bf16"
    return "fp32"


def _policy(name: str, requested: str, kind: str, engine: str, unet: str) -> Policy:
    return Policy(
        name=name,
        requested=requested,
        kind=kind,
        engine=engine,
        keras_dtype_policy=KERAS_DTYPE[name],
        engine_precision=name,
        unet_precision=unet,
        cache_key="int8" if name == "int8" else "fp32",
    )


def resolve(value: Policy | str, kind: str, engine: str = "keras") -> Policy:
    """``value`` (a ``--precision`` in the vocabulary or an old spelling, or a Policy already
    resolved) as the Policy of a ``kind`` stage on ``engine``. A value the kind does not accept
    is a UsageError naming the accepted ones. A ``unet`` resolve of another kind's Policy gives
    the U-Net's policy beside it (:meth:`Policy.unet`)."""
    if isinstance(value, Policy):
        if value.engine != engine and kind != TRAINING:
            raise ValueError(f"a precision resolved for engine {value.engine} used on {engine}")
        if kind == UNET:
            return value.unet()
        if value.kind != kind:
            raise ValueError(f"a {value.kind} precision used for a {kind} stage")
        return value
    try:
        requested = spelled(value, kind)
    except ValueError as error:
        raise UsageError(f"precision: {error}") from None
    if kind == TRAINING:
        engine = "keras"
    name = _auto(kind, engine) if requested == "auto" else requested
    unet = name
    if kind == ENGINE:
        unet = requested if requested in ("fp32", "bf16") else _auto(UNET, engine)
    return _policy(name, requested, kind, engine, unet)


def for_training(value: Policy | str) -> Policy:
    return resolve(value, TRAINING)


def for_engine(value: Policy | str, engine: str) -> Policy:
    return resolve(value, ENGINE, engine)


def for_unet(value: Policy | str, engine: str = "keras") -> Policy:
    return resolve(value, UNET, engine)


__all__ = ["KERAS_DTYPE", "Policy", "for_engine", "for_training", "for_unet", "resolve"]
