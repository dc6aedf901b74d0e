"""int8: the calibration images a member is quantised on, and the quantised exports.

Calibration images are built here only: a stage names its calibration files and how to get a
member's views of them (:func:`files_calibration`), and a :class:`Calibration` keys the cache by
their digest and makes the preprocessed images only when a quantised model has to be built (a warm
cache never reads them). They must never be the images being scored: ranges fitted on the test
images would leak them into the scores.

ONNX Runtime quantises statically (QDQ, per channel, through its own quantisation tools); OpenVINO
through NNCF's post-training quantisation when ``nncf`` is installed, else it runs ONNX Runtime's
quantised ONNX model.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import UsageError
from deepcovidxr.runtime import convert
from deepcovidxr.runtime.cache import CacheEntry, cached
from deepcovidxr.runtime.digest import array_sha256, file_sha256
from deepcovidxr.runtime.exports import CONVERTER_PACKAGES, Source, base_key, onnx_fp32, openvino_ir

log = logging.getLogger(__name__)

NEEDS_CALIBRATION = (
    "int8 needs calibration images: a few dozen preprocessed images from data that is not being "
    "predicted (e.g. the Validation split), as float32 (n, size, size, 3)"
)


class Calibration:
    """int8 calibration images given lazily: ``digest`` (part of the cache key) is cheap, and the
    preprocessed images of a member (``images(member)``, float32 (n, s, s, 3)) are made only when
    a quantised model has to be built, so a warm cache never prepares them.

    ``make(member)`` returns the images for one member; ``digest`` must change whenever they would
    (e.g. a digest of the calibration files and of the preprocessing that turns them into views)."""

    def __init__(self, digest: str, count: int, make: Callable[[Member], np.ndarray]) -> None:
        self.digest, self.count, self._make = digest, count, make

    def images(self, member: Member) -> np.ndarray:
        return check_calibration(member, self._make(member))


def files_calibration(
    prefix: str, files: Sequence[tuple[str, Path]], views: Callable[[Member], Sequence[np.ndarray]]
) -> Calibration:
    """Calibration from files: the digest covers ``prefix`` (what turns the files into views, e.g.
    the U-Net that crops them) and each file's name and sha256; ``views(member)`` gives the member's
    gray uint8 views (s, s) of them, preprocessed here as the members' input."""
    digest = hashlib.sha256(prefix.encode())
    for name, path in files:
        digest.update(f"{name}\0{file_sha256(path)}".encode())

    def make(member: Member) -> np.ndarray:
        from deepcovidxr.imaging.preprocess import to_model_input

        return np.stack([to_model_input(view) for view in views(member)])

    return Calibration(digest.hexdigest(), len(files), make)


def check_calibration(member: Member, calibration: np.ndarray | None) -> np.ndarray:
    """Calibration images as float32 (n, s, s, 3) for ``member``, or a UsageError saying what is wrong."""
    if calibration is None:
        raise UsageError(NEEDS_CALIBRATION)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    size = member.size
    if calibration.ndim != 4 or calibration.shape[1:] != (size, size, 3) or not len(calibration):
        raise UsageError(
            f"{member.short_name}: calibration images must be float32 (n, {size}, {size}, 3) with n >= 1, "
            f"got {calibration.shape}"
        )
    return calibration


def member_calibration(member: Member, calibration: np.ndarray | Calibration | None) -> np.ndarray | Calibration:
    """What keys and builds ``member``'s int8 export: a lazy :class:`Calibration` as it is (checked
    when its images are made), an array checked now."""
    return calibration if isinstance(calibration, Calibration) else check_calibration(member, calibration)


def _calibration_key(calibration: np.ndarray | Calibration) -> dict:
    if isinstance(calibration, Calibration):
        return {"calibration_sha256": calibration.digest, "calibration_images": calibration.count}
    return {"calibration_sha256": array_sha256(calibration), "calibration_images": len(calibration)}


def _calibration_images(member: Member, calibration: np.ndarray | Calibration) -> np.ndarray:
    return calibration.images(member) if isinstance(calibration, Calibration) else calibration


def _batches(calibration: np.ndarray, batch: int = 8) -> Iterator[np.ndarray]:
    for start in range(0, len(calibration), batch):
        yield calibration[start : start + batch]


def onnx_int8(
    member: Member, source: Source, folder: Path, calibration: np.ndarray | Calibration, stats: dict
) -> CacheEntry:
    """ONNX Runtime's statically quantised model (QDQ, per channel, s8s8) of the fp32 ONNX export."""
    key = base_key(source, "onnxruntime", "int8", (*CONVERTER_PACKAGES, "onnxruntime"))
    key.update(_calibration_key(calibration))
    entry = CacheEntry(folder, source.stem, "onnxruntime", "int8", key, (".onnx",))

    def build(entry: CacheEntry) -> dict:
        convert.require("onnxruntime", "onnxruntime", "int8 quantisation", "engine openvino with nncf")
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )

        fp32 = onnx_fp32(source, folder, stats)  # needed only to build: a valid int8 entry is used alone
        images = _calibration_images(member, calibration)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = _batches(images)

            def get_next(self) -> dict | None:
                batch = next(self.batches, None)
                return None if batch is None else {convert.INPUT_NAME: batch}

        with tempfile.TemporaryDirectory(prefix=".int8-", dir=folder) as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            # Shape inference + graph optimisation first, as ONNX Runtime's quantisation guide asks.
            quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
            with atomic_path(entry.path) as tmp:
                quantize_static(
                    str(prepared),
                    str(tmp),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                )
        return {"quantizer": "onnxruntime.quantization.quantize_static (QDQ, per-channel, s8s8, MinMax)"}

    return cached(entry, build, stats)


def openvino_int8(
    member: Member, source: Source, folder: Path, calibration: np.ndarray | Calibration, stats: dict
) -> CacheEntry:
    """NNCF's post-training quantisation of the fp32 IR; without nncf, ONNX Runtime's quantised ONNX."""
    try:
        import nncf  # noqa: F401
    except ImportError:
        # Without NNCF, OpenVINO runs ONNX Runtime's statically quantised ONNX (QDQ is read natively).
        log.info("nncf not installed: OpenVINO int8 runs ONNX Runtime's quantised ONNX model")
        return onnx_int8(member, source, folder, calibration, stats)
    key = base_key(source, "openvino", "int8", ("tensorflow", "keras", "openvino", "nncf"))
    key.update(_calibration_key(calibration))
    entry = CacheEntry(folder, source.stem, "openvino", "int8", key, (".xml", ".bin"))

    def build(entry: CacheEntry) -> dict:
        import nncf
        import openvino as ov

        ir = openvino_ir(source, folder, stats)
        images = _calibration_images(member, calibration)
        # One image per calibration item: NNCF's subset_size counts items.
        dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
        quantized = nncf.quantize(ov.Core().read_model(str(ir.path)), dataset, subset_size=len(images))
        convert.write_ir(ov, quantized, entry.files[".xml"])
        return {"quantizer": "nncf.quantize (default preset, fast bias correction)"}

    return cached(entry, build, stats)


__all__ = [
    "NEEDS_CALIBRATION",
    "Calibration",
    "check_calibration",
    "files_calibration",
    "member_calibration",
    "onnx_int8",
    "openvino_int8",
]
