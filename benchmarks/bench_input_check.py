"""The input check on images it never saw: flagged rates per kind of image, and its cost.

Kinds: frontal films (../shared/data/cxr, lungmasks/*/images, nih/images; and our chest phantoms,
deepcovidxr.synthetic.phantoms, which the demo and the tests crop), lateral films and CT slices
(nonfrontal/), generated photos (input_check.synthetic_photo) and scikit-image's sample pictures.

Held-out rates come from patient-split cross-validation of the whole fitting procedure
(tools.input_check_fit): each of ``--cv`` splits fits on half of the patient groups (and the
augmented copies of those groups' films) and counts the flags on the other half's originals; the
counts are pooled. The shipped model is fitted the same way on everything (``--fit``) and is
measured on photos and phantoms of seeds no fit used. The cost per image (features + model, on
the U-Net map the crop computes anyway) is printed next to the crop's (decode + U-Net input +
U-Net + box rules).

    .venv/bin/python benchmarks/bench_input_check.py                 # cross-validated rates, costs
    .venv/bin/python benchmarks/bench_input_check.py --fit           # also refit the shipped JSON
    .venv/bin/python benchmarks/bench_input_check.py --cache /tmp/ic.npz   # reuse the U-Net pass
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from deepcovidxr.contract import atomic, shipped  # noqa: E402
from deepcovidxr.imaging.reader import read_gray_info  # noqa: E402
from deepcovidxr.lungs import input_check, segment  # noqa: E402
from deepcovidxr.lungs.cropper import LungCropper, locate  # noqa: E402
from deepcovidxr.synthetic.phantoms import make_phantom  # noqa: E402
from tools import input_check_fit  # noqa: E402

DATA = Path(os.environ.get("DEEPCOVIDXR_SHARED_DATA", REPO.parent / "shared" / "data"))
FIT_PHOTOS = 200
HELDOUT_SEED = 100_000
HELDOUT_PHOTOS = 200
PHANTOM_SEED = 50_000
FIT_PHANTOMS = 60
HELDOUT_PHANTOMS = 40


def shared_images(data: Path = DATA) -> list[tuple[str, str, str]]:
    """(kind, file relative to ``data``, patient group) of every shared image the check is measured on."""
    items = []
    for row in csv.DictReader((data / "cxr" / "manifest.csv").open(encoding="utf-8")):
        source = row["dataset"].split()[0].lower()
        items.append(("frontal_cxr", f"cxr/{row['file']}", f"{source}:{row['patient_id']}"))
    for row in csv.DictReader((data / "lungmasks" / "manifest.csv").open(encoding="utf-8")):
        collection, _, name = row["image"].split("/")
        items.append(("frontal_lungmasks", f"lungmasks/{row['image']}", f"{collection}:{name.rsplit('_', 1)[0]}"))
    for row in csv.DictReader((data / "nih" / "images_manifest.csv").open(encoding="utf-8")):
        items.append(("frontal_nih", f"nih/{row['file']}", f"nih:{row['patient_id']}"))
    for row in csv.DictReader((data / "nonfrontal" / "manifest.csv").open(encoding="utf-8")):
        items.append((row["kind"], f"nonfrontal/{row['file']}", f"ieee8023:{row['patient_id']}"))
    return items


def photos(fit: bool) -> list[tuple[str, str, str]]:
    """Generated photos (fit: seeds 0..FIT_PHOTOS-1; else held-out seeds) and, for the fit, the
    scikit-image sample pictures."""
    seeds = range(FIT_PHOTOS) if fit else range(HELDOUT_SEED, HELDOUT_SEED + HELDOUT_PHOTOS)
    synthetic = [("photo_synthetic", f"synthetic:{s}", f"synthetic:{s}") for s in seeds]
    natural = [("photo_natural", f"skimage:{n}", f"skimage:{n}") for n in input_check.NATURAL_PHOTOS]
    return synthetic + (natural if fit else [])


def phantoms(fit: bool) -> list[tuple[str, str, str]]:
    """Our chest phantoms (deepcovidxr.synthetic.phantoms, the demo's and tests' films) count as frontal films."""
    seeds = range(PHANTOM_SEED, PHANTOM_SEED + FIT_PHANTOMS) if fit else range(HELDOUT_SEED, HELDOUT_SEED + 40)
    return [("frontal_phantom", f"phantom:{s}", f"phantom:{s}") for s in seeds]


def load(name: str) -> tuple[np.ndarray, object]:
    if name.startswith("phantom:"):
        seed = int(name.split(":")[1])
        return make_phantom(seed, positive=bool(seed % 2)).image, None
    if name.startswith("synthetic:"):
        return input_check.synthetic_photo(int(name.split(":")[1])), None
    if name.startswith("skimage:"):
        return input_check.natural_photo(name.split(":")[1]), None
    return read_gray_info(DATA / name)


def measure(jobs: list[tuple[str, str, str, int]], cropper: LungCropper, with_check: bool = False) -> dict:
    """``describe`` rows (and with ``with_check`` the shipped model's values) and step timings of
    (kind, name, group, copy) jobs; copy 0 is the image as read, copy k > 0 its k-th augmented
    copy (input_check_fit.augment)."""
    out: dict = defaultdict(list)
    for start in range(0, len(jobs), cropper.batch_size):
        chunk = jobs[start : start + cropper.batch_size]
        t0 = time.perf_counter()
        loaded = []
        for _, name, _, copy in chunk:
            gray, info = load(name)
            loaded.append(
                (input_check_fit.augment(gray, input_check_fit.seed_of(name, copy)), None) if copy else (gray, info)
            )
        inputs = np.stack([segment.unet_input(gray) for gray, _ in loaded])
        t1 = time.perf_counter()
        probabilities = cropper.probabilities(inputs)
        t2 = time.perf_counter()
        for (gray, _), p in zip(loaded, probabilities, strict=True):
            locate(gray, p)
        t3 = time.perf_counter()
        for (gray, info), p in zip(loaded, probabilities, strict=True):
            out["rows"].append(input_check.describe(gray, p))
            out["values"].append(input_check.check(gray, p, info) if with_check else "")
        t4 = time.perf_counter()
        n = len(chunk)
        for kind, name, group, copy in chunk:
            out["kinds"].append(kind)
            out["names"].append(name)
            out["groups"].append(group)
            out["copies"].append(copy)
            out["crop_s"].append((t3 - t0) / n)
            out["unet_s"].append((t2 - t1) / n)
            out["check_s"].append((t4 - t3) / n)
        if start % (20 * cropper.batch_size) == 0:
            print(f"  {start + n}/{len(jobs)} images described", file=sys.stderr, flush=True)
    return {key: np.asarray(value) for key, value in out.items()}


def described(items: list[tuple[str, str, str]], cropper: LungCropper, cache: Path | None) -> dict:
    """Every item and its augmented copies, described once (cached in ``cache`` when given)."""
    jobs = [(k, n, g, c) for k, n, g in items for c in range(1 + input_check_fit.copies(k, n))]
    if cache is not None and cache.is_file():
        data = dict(np.load(cache))
        if [tuple(j) for j in zip(data["kinds"], data["names"], data["groups"], data["copies"], strict=True)] == [
            (k, n, g, c) for k, n, g, c in jobs
        ]:
            return data
    data = measure(jobs, cropper)
    if cache is not None:
        np.savez_compressed(cache, **data)
    return data


def table(counts: dict[str, tuple[int, int]], title: str) -> None:
    print(f"\n{title}\n{'kind':20s} {'held-out':>8s} {'flagged':>8s} {'rate':>7s}")
    for kind, (flagged, total) in counts.items():
        print(f"{kind:20s} {total:8d} {flagged:8d} {flagged / total:7.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="refit assets/input_check.json on every image")
    parser.add_argument("--cv", type=int, default=20, help="patient splits of the cross-validation (0: none)")
    parser.add_argument("--cache", type=Path, default=None, help="npz file keeping the described images")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    cropper = LungCropper(batch_size=args.batch_size)
    data = described(shared_images() + photos(fit=True) + phantoms(fit=True), cropper, args.cache)
    original = data["copies"] == 0
    print(f"{int(original.sum())} images, {int((~original).sum())} augmented copies", flush=True)
    cv = None
    if args.cv:
        t0 = time.perf_counter()
        cv = input_check_fit.cross_validate(
            data["rows"][original],
            data["kinds"][original],
            data["groups"][original],
            (data["rows"][~original], data["kinds"][~original], data["groups"][~original]),
            splits=args.cv,
        )
        table(cv, f"held out: pooled over {args.cv} patient splits (fit on half, flags on the other half)")
        print(f"({time.perf_counter() - t0:.0f} s)")
    if args.fit:
        model = input_check_fit.fit_model(data["rows"], data["kinds"], data["names"][original])
        model["fit"] = {
            "data": "../shared/data (README there): cxr, lungmasks/*/images, nih/images, nonfrontal/{lateral,ct}; "
            f"synthetic photos seeds 0..{FIT_PHOTOS - 1}; scikit-image sample pictures; phantoms seeds "
            f"{PHANTOM_SEED}..{PHANTOM_SEED + FIT_PHANTOMS - 1}; plus augmented copies (input_check_fit.augment)",
            "kind_weights": {**input_check_fit.KIND_WEIGHT, "frontal_*": input_check_fit.FRONTAL_WEIGHT},
            "counts": {k: int((data["kinds"] == k).sum()) for k in sorted(set(data["kinds"]))},
            "cross_validation": None if cv is None else {k: {"flagged": a, "held_out": b} for k, (a, b) in cv.items()},
            "cross_validation_splits": args.cv,
        }
        path = shipped.asset(*input_check.MODEL_ASSET)
        atomic.write_text(path, json.dumps(model, separators=(",", ":")) + "\n")
        input_check.load_model.cache_clear()
        print(f"\nwrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    # The shipped model on images no fit used.
    fresh = measure([(k, n, g, 0) for k, n, g in photos(fit=False) + phantoms(fit=False)], cropper, True)
    counts = {}
    for kind in sorted(set(fresh["kinds"])):
        chosen = fresh["kinds"] == kind
        counts[kind] = (int((fresh["values"][chosen] != input_check.OK).sum()), int(chosen.sum()))
    table(counts, "shipped model on photos and phantoms of unseen seeds")
    fitted = set(input_check.load_model()["fitted_on"])
    real = original & np.array([not str(k).startswith(("photo", "frontal_phantom")) for k in data["kinds"]])
    unseen = [n for n in data["names"][real] if n not in fitted]
    print(f"shared images the shipped model was not fitted on: {len(unseen)}")
    # The cost: the whole check (features + model) on real films, next to the crop of the same films.
    films = [
        (k, n, g, 0) for k, n, g in zip(data["kinds"][real], data["names"][real], data["groups"][real], strict=True)
    ]
    timed = measure(films[:: max(1, len(films) // 128)], cropper, True)
    check_ms = 1000 * np.median(timed["check_s"])
    crop_ms = 1000 * np.median(timed["crop_s"])
    unet_ms = 1000 * np.median(timed["unet_s"])
    print(
        f"\ncost per image (median over batches of {args.batch_size}, {len(timed['kinds'])} real films): check "
        f"{check_ms:.2f} ms; crop {crop_ms:.1f} ms (of which U-Net {unet_ms:.1f} ms); "
        f"check/crop {check_ms / crop_ms:.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
