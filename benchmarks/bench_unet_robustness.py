"""Lung U-Net robustness: does the mask keep opacified lung?

For each U-Net weights file given, on the held-out Montgomery/Shenzhen pairs named in the first
file's metadata (never trained on by any of them, if they share the split):

* ``clean``: Dice of the mask ``crop_img.py --save-masks`` writes, against the manual mask, for
  all films, normal films (``*_0``) and TB films (``*_1``, real pathology);
* ``painted``: the same films with lower-zone opacities painted in at full resolution by the
  phantom generator (:func:`deepcovidxr.synthetic.phantoms.lower_zone_opacities`, a different pattern from
  the U-Net's training augmentation), manual mask unchanged: Dice, and ``kept``, the fraction of
  painted opacity pixels that the predicted mask keeps (1.0: the opacity stays inside the lung);

and on the real films of ``../shared/data/cxr`` (no lung ground truth there, so shape only):
crop statuses and the median solidity (area / convex-hull area) of the kept lung components. A
mask that cuts opacified lung out is ragged; manual lung masks have solidity of about 0.9.

Example:
    python benchmarks/bench_unet_robustness.py unet/lung_unet.weights.h5 other/lung_unet.weights.h5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OPACITY_AMPLITUDE = (0.26, 0.34)  # as the phantoms: added brightness, fraction of full scale


@dataclass(frozen=True)
class HeldOutFilm:
    truth: np.ndarray  # manual lung mask, boolean
    clean: np.ndarray
    painted: np.ndarray  # the same film with phantom opacities
    opacity: np.ndarray  # painted opacity pixels inside the true lung, boolean
    tb: bool


def _painted(gray: np.ndarray, truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(film with opacities, boolean opacity pixels inside the true lung)."""
    from deepcovidxr.synthetic.phantoms import lower_zone_opacities

    rng = np.random.default_rng(seed)
    lung = truth.astype(np.uint8)
    soft = cv2.GaussianBlur(lung.astype(np.float32), (0, 0), 0.006 * lung.shape[1] + 0.6)
    field = lower_zone_opacities(rng, lung, soft)
    amplitude = rng.uniform(*OPACITY_AMPLITUDE)
    film = np.clip(np.rint(gray.astype(np.float32) + 255.0 * amplitude * field), 0, 255).astype(np.uint8)
    return film, (field >= 0.3) & truth


def load_heldout(pairs: list, seed: int) -> list[HeldOutFilm]:
    """Read each held-out pair once and paint its opacities (seeded per film)."""
    from deepcovidxr.imaging.reader import read_gray
    from deepcovidxr.lungs.train import MASK_THRESHOLD

    films = []
    for index, pair in enumerate(pairs):
        gray = read_gray(pair.image)
        truth = read_gray(pair.mask) > MASK_THRESHOLD
        painted, opacity = _painted(gray, truth, seed + index)
        films.append(HeldOutFilm(truth, gray, painted, opacity, pair.image.stem.endswith("_1")))
    return films


def _solidity(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    area = sum(cv2.contourArea(c) for c in contours)
    hull = sum(cv2.contourArea(cv2.convexHull(c)) for c in contours)
    return float(area / hull) if hull > 0 else 0.0


def measure(weights: Path, held: list[HeldOutFilm], real: list[tuple[str, np.ndarray]]) -> dict:
    """Figures of one U-Net on the held-out films and on the real (group, film) pairs."""
    from deepcovidxr.lungs.cropper import LungCropper
    from deepcovidxr.lungs.segment import CropStatus
    from deepcovidxr.lungs.train import dice

    cropper = LungCropper(weights, batch_size=16)

    def masks(images: list[np.ndarray]) -> list[np.ndarray]:
        results = [r for i in range(0, len(images), 16) for r in cropper.crop(images[i : i + 16])]
        return [r.full_resolution_mask(im.shape[1], im.shape[0]) > 0 for r, im in zip(results, images, strict=True)]

    clean = np.array([dice(m, f.truth) for m, f in zip(masks([f.clean for f in held]), held, strict=True)])
    painted_masks = masks([f.painted for f in held])
    painted = [dice(m, f.truth) for m, f in zip(painted_masks, held, strict=True)]
    kept = [
        float((m & f.opacity).sum() / f.opacity.sum())
        for m, f in zip(painted_masks, held, strict=True)
        if f.opacity.any()
    ]
    tb = np.array([f.tb for f in held])
    statuses: dict[str, dict[str, int]] = {}
    solidity: dict[str, list[float]] = {}
    for start in range(0, len(real), 16):
        chunk = real[start : start + 16]
        for (group, _), result in zip(chunk, cropper.crop([film for _, film in chunk]), strict=True):
            counts = statuses.setdefault(group, {s.value: 0 for s in CropStatus if s is not CropStatus.ERROR})
            counts[result.status.value] += 1
            if result.status is not CropStatus.FALLBACK:
                solidity.setdefault(group, []).append(_solidity(result.lung.lung_mask256))
    return {
        "weights": str(weights),
        "heldout": len(held),
        "clean_dice": float(clean.mean()),
        "clean_dice_normal": float(clean[~tb].mean()),
        "clean_dice_tb": float(clean[tb].mean()),
        "tb_films": int(tb.sum()),
        "painted_dice": float(np.mean(painted)),
        "painted_kept": float(np.mean(kept)),
        "cxr_status": statuses,
        "cxr_solidity_median": {g: float(np.median(v)) for g, v in sorted(solidity.items())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", type=Path, nargs="+", help="U-Net .weights.h5 files (with their .json metadata)")
    p.add_argument("--masks", type=Path, default=SHARED / "lungmasks", help="Montgomery/Shenzhen pairs")
    p.add_argument("--cxr", type=Path, default=SHARED / "cxr", help="real films without lung masks")
    p.add_argument("--seed", type=int, default=0, help="seed of the painted opacities")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    for path in (args.masks, args.cxr, *args.weights):
        if not path.exists():
            print(f"not found: {path}", file=sys.stderr)
            return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from deepcovidxr.imaging.reader import iter_input_files, read_gray
    from deepcovidxr.lungs.train import find_pairs
    from deepcovidxr.lungs.unet import sidecar_path

    meta = json.loads(sidecar_path(args.weights[0]).read_text(encoding="utf-8"))
    names = set(meta["training_data"]["heldout_files"])
    pairs = [p for p in find_pairs(args.masks) if str(p.image.relative_to(args.masks)) in names]
    held = load_heldout(pairs, args.seed)  # read and painted once, shared by every weights file
    cxr_files = sorted(f for f in iter_input_files(args.cxr) if f.suffix.lower() in {".png", ".jpg", ".jpeg"})
    real = [(f.parent.name, read_gray(f)) for f in cxr_files]
    rows = [measure(w, held, real) for w in args.weights]
    print(
        "| weights | clean Dice | normal | TB | painted Dice | opacity kept | cxr solidity (Neg / Pos) "
        "| one_lung+fallback (Neg / Pos) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        solid = row["cxr_solidity_median"]
        odd = {g: c["one_lung"] + c["fallback"] for g, c in row["cxr_status"].items()}
        print(
            f"| {row['weights']} | {row['clean_dice']:.4f} | {row['clean_dice_normal']:.4f} | "
            f"{row['clean_dice_tb']:.4f} | {row['painted_dice']:.4f} | {row['painted_kept']:.3f} | "
            f"{solid.get('Negative', float('nan')):.3f} / {solid.get('Positive', float('nan')):.3f} | "
            f"{odd.get('Negative', 0)} / {odd.get('Positive', 0)} |"
        )
    print(f"held-out pairs: {rows[0]['heldout']} ({rows[0]['tb_films']} TB); real films: {len(cxr_files)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
