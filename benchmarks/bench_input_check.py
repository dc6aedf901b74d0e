"""The input check on images it never saw: flagged rates per kind of image, and its cost.

Kinds: frontal films (../shared/data/cxr, lungmasks/*/images, nih/images; and our chest phantoms,
deepcovidxr.synthetic, which the demo and the tests crop), lateral films and CT
slices (nonfrontal/), generated photos (input_check.synthetic_photo) and scikit-image's sample
pictures. Every file listed in assets/input_check.json's ``fitted_on`` is left out of the rates.
The cost per image (features + trees, on the U-Net map the crop computes anyway) is printed next
to the crop's (decode + U-Net input + U-Net + box rules).

    .venv/bin/python benchmarks/bench_input_check.py            # held-out rates and costs
    .venv/bin/python benchmarks/bench_input_check.py --fit      # refit the shipped JSON, then measure

Fitting uses the patients (``patient_id`` of the manifests, namespaced by source) whose SHA-1
falls in the first half, synthetic photos with seeds 0..FIT_PHOTOS-1 and the sample pictures whose
names hash the same way; the held-out photos are seeds HELDOUT_SEED...
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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

from deepcovidxr import atomic, input_check, shipped  # noqa: E402
from deepcovidxr.imageio import read_gray_info  # noqa: E402
from deepcovidxr.lungs import segment  # noqa: E402
from deepcovidxr.lungs.cropper import LungCropper, locate  # noqa: E402
from deepcovidxr.synthetic import make_phantom  # noqa: E402

DATA = Path(os.environ.get("DEEPCOVIDXR_SHARED_DATA", REPO.parent / "shared" / "data"))
FIT_PERCENT = 50
FIT_PHOTOS = 200
HELDOUT_SEED = 100_000
HELDOUT_PHOTOS = 200
PHANTOM_SEED = 50_000
FIT_PHANTOMS = 60
# non-frontal films are rare next to photos: they weigh more in the fit
WEIGHTS = {"lateral": 10.0, "ct": 10.0, "photo_synthetic": 0.5, "photo_natural": 0.5}


def in_fit_half(group: str) -> bool:
    return int(hashlib.sha1(group.encode()).hexdigest(), 16) % 100 < FIT_PERCENT


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
    seeds = range(FIT_PHOTOS) if fit else range(HELDOUT_SEED, HELDOUT_SEED + HELDOUT_PHOTOS)
    synthetic = [("photo_synthetic", f"synthetic:{s}", f"synthetic:{s}") for s in seeds]
    natural = [("photo_natural", f"skimage:{n}", f"skimage:{n}") for n in input_check.NATURAL_PHOTOS]
    return synthetic + [n for n in natural if in_fit_half(n[2]) == fit]


def phantoms(fit: bool) -> list[tuple[str, str, str]]:
    """Our chest phantoms (deepcovidxr.synthetic, the demo's and tests' films) count as frontal films."""
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


def measure(items: list[tuple[str, str, str]], cropper: LungCropper, with_check: bool = True) -> list[dict]:
    """Per image: kind, name, features, check value and the timings of each step."""
    results = []
    for start in range(0, len(items), cropper.batch_size):
        chunk = items[start : start + cropper.batch_size]
        t0 = time.perf_counter()
        loaded = [load(name) for _, name, _ in chunk]
        inputs = np.stack([segment.unet_input(gray) for gray, _ in loaded])
        t1 = time.perf_counter()
        probabilities = cropper.probabilities(inputs)
        t2 = time.perf_counter()
        for (gray, _), p in zip(loaded, probabilities, strict=True):
            locate(gray, p)
        t3 = time.perf_counter()
        values, rows = [], []
        for (gray, info), p in zip(loaded, probabilities, strict=True):
            rows.append(input_check.features(gray, p))
            values.append(input_check.check(gray, p, info) if with_check else "")
        t4 = time.perf_counter()
        n = len(chunk)
        for (kind, name, group), row, value in zip(chunk, rows, values, strict=True):
            results.append(
                {
                    "kind": kind,
                    "name": name,
                    "group": group,
                    "features": row,
                    "value": value,
                    "crop_s": (t3 - t0) / n,
                    "unet_s": (t2 - t1) / n,
                    "check_s": (t4 - t3) / n,
                }
            )
    return results


def fit(cropper: LungCropper) -> None:
    items = [i for i in shared_images() if in_fit_half(i[2])] + photos(fit=True) + phantoms(fit=True)
    print(f"fitting on {len(items)} images ...", flush=True)
    rows = measure(items, cropper, with_check=False)
    x = np.stack([r["features"] for r in rows])
    y = np.array([not r["kind"].startswith("frontal") for r in rows])
    w = np.array([WEIGHTS.get(r["kind"], 1.0) for r in rows])
    model = input_check.fit_model(x, y, w, [r["name"] for r in rows])
    model["fit"] = {
        "data": "../shared/data (README there): cxr, lungmasks/*/images, nih/images, nonfrontal/{lateral,ct}; "
        f"patients whose sha1('<source>:<patient_id>') % 100 < {FIT_PERCENT}; synthetic photos seeds "
        f"0..{FIT_PHOTOS - 1}; scikit-image sample pictures by the same hash",
        "weights": WEIGHTS,
        "counts": {k: int(sum(r["kind"] == k for r in rows)) for k in sorted({r["kind"] for r in rows})},
    }
    path = shipped.asset(*input_check.MODEL_ASSET)
    atomic.write_text(path, json.dumps(model, separators=(",", ":")) + "\n")  # compact: trees are long
    input_check.load_model.cache_clear()
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="refit assets/input_check.json first")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    cropper = LungCropper(batch_size=args.batch_size)
    if args.fit:
        fit(cropper)
    fitted = set(input_check.load_model()["fitted_on"])
    items = [i for i in shared_images() + photos(fit=False) + phantoms(fit=False) if i[1] not in fitted]
    print(f"held-out: {len(items)} images (left out: {len(fitted)} fitted on)", flush=True)
    results = measure(items, cropper)
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r)
    print(f"\n{'kind':20s} {'held-out':>8s} {'flagged':>8s} {'rate':>7s}  values")
    for kind in sorted(by_kind):
        rows = by_kind[kind]
        flagged = sum(r["value"] != input_check.OK for r in rows)
        values = defaultdict(int)
        for r in rows:
            values[r["value"]] += 1
        print(f"{kind:20s} {len(rows):8d} {flagged:8d} {flagged / len(rows):7.1%}  {dict(values)}")
    frontal = [r for r in results if r["kind"].startswith("frontal")]
    wrong = [r["name"] for r in frontal if r["value"] != input_check.OK]
    print("\nflagged frontal films:", *wrong, sep="\n  " if wrong else " ")
    missed = [r["name"] for r in results if r["kind"] in ("lateral", "ct") and r["value"] == input_check.OK]
    print("lateral/CT passed as frontal:", *missed, sep="\n  " if missed else " ")
    real = [r for r in results if not r["kind"].startswith(("photo", "frontal_phantom"))]
    check_ms = 1000 * np.median([r["check_s"] for r in real])
    crop_ms = 1000 * np.median([r["crop_s"] for r in real])
    unet_ms = 1000 * np.median([r["unet_s"] for r in real])
    print(
        f"\ncost per image (median over batches of {args.batch_size}, real films): check {check_ms:.2f} ms; "
        f"crop {crop_ms:.1f} ms (of which U-Net {unet_ms:.1f} ms); check/crop {check_ms / crop_ms:.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
