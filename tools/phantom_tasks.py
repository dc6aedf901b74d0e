"""Learning tasks on synthetic phantoms with known answers, shared by the tests and benchmarks.

:func:`write_view_tree` writes a training-ready ``<size>/<view>/{Train,Validation,Test}/{Negative,
Positive}`` tree of phantoms (odd indices positive) without the U-Net: the crop view is cut from
each phantom's true lung mask with crop_img.py's box rules (8 px padding at 256 scale, squared).
:func:`write_class_view_tree` writes the three-class variant (``{Diffuse,LowerZone,Normal}``:
class ``index % 3`` in sorted order, :data:`deepcovidxr.synthetic.phantoms.PHANTOM_CLASSES`) the same way.
:func:`gradcam_pointing` measures where a trained member's Grad-CAM peak falls against the true
opacity masks.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from deepcovidxr.imaging.geometry import Box, square_box
from deepcovidxr.lungs.segment import PAD, UNET_SIZE
from deepcovidxr.synthetic.phantoms import PHANTOM_CLASSES, Phantom, class_phantom, make_phantom

PHANTOM_SIDE = 256


def phantom_for_index(index: int, seed: int = 0, opacity_boost: float = 0.0) -> tuple[Phantom, np.ndarray]:
    """The phantom behind ``phantom_<index>.png`` and its image with ``opacity_boost`` grey levels
    added inside the opacities (a stronger signal for runs that must learn from random weights
    in a few CPU minutes)."""
    phantom = make_phantom(seed * 100_000 + index, index % 2 == 1, height=PHANTOM_SIDE, width=PHANTOM_SIDE)
    image = phantom.image
    if opacity_boost:
        boosted = image.astype(np.float32) + opacity_boost * (phantom.opacity_mask > 0)
        image = np.clip(boosted, 0, 255).astype(np.uint8)
    return phantom, image


def class_phantom_for_index(
    index: int, seed: int = 0, opacity_boost: float = 0.0, classes: tuple[str, ...] = tuple(PHANTOM_CLASSES)
) -> tuple[str, Phantom, np.ndarray]:
    """(class name, phantom, image) behind ``<class>/phantom_<index>.png`` of a class view tree:
    class ``classes[index % len(classes)]``, the same anatomy seed as :func:`phantom_for_index`."""
    name = classes[index % len(classes)]
    phantom = class_phantom(seed * 100_000 + index, name, height=PHANTOM_SIDE, width=PHANTOM_SIDE)
    return name, phantom, _boosted(phantom, opacity_boost)


def _boosted(phantom: Phantom, opacity_boost: float) -> np.ndarray:
    image = phantom.image
    if opacity_boost:
        boosted = image.astype(np.float32) + opacity_boost * (phantom.opacity_mask > 0)
        image = np.clip(boosted, 0, 255).astype(np.uint8)
    return image


def true_crop_box(lung_mask: np.ndarray) -> Box:
    """The square box crop_img.py cuts, from a true lung mask instead of the U-Net's."""
    height, width = lung_mask.shape
    ys, xs = np.nonzero(lung_mask)
    pad_x, pad_y = round(PAD * width / UNET_SIZE), round(PAD * height / UNET_SIZE)
    tight = Box(
        max(0, int(xs.min()) - pad_x),
        max(0, int(ys.min()) - pad_y),
        min(width, int(xs.max()) + 1 + pad_x),
        min(height, int(ys.max()) + 1 + pad_y),
    )
    return square_box(tight, width, height)


def write_view_tree(
    root: Path,
    count: int,
    size: int,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    opacity_boost: float = 0.0,
    view: str = "uncrop",
) -> Path:
    """Write ``count`` phantoms, Lanczos-resized to ``size``, as ``root/<size>/<view>/...``; return
    that view folder (what train.py takes as ``-p``)."""
    from deepcovidxr.contract.layout import DataTree, Label, Split
    from deepcovidxr.imaging.preprocess import lanczos_resize
    from deepcovidxr.imaging.reader import write_gray

    tree = DataTree(root)
    bounds = [round(f * count) for f in (splits[0], splits[0] + splits[1])]
    for index in range(count):
        phantom, image = phantom_for_index(index, seed, opacity_boost)
        if view == "crop":
            image = true_crop_box(phantom.lung_mask).crop(image)
        split = Split.TRAIN if index < bounds[0] else Split.VALIDATION if index < bounds[1] else Split.TEST
        label = Label.POSITIVE if phantom.label else Label.NEGATIVE
        write_gray(tree.class_dir(size, view, split, label) / f"phantom_{index:04d}.png", lanczos_resize(image, size))
    return tree.view_dir(size, view)


def write_class_view_tree(
    root: Path,
    count: int,
    size: int,
    seed: int = 0,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    opacity_boost: float = 0.0,
    view: str = "uncrop",
    classes: tuple[str, ...] = tuple(PHANTOM_CLASSES),
) -> Path:
    """The multi-class :func:`write_view_tree`: ``root/<size>/<view>/<split>/<class>/phantom_<i>.png``
    with class ``classes[i % len(classes)]`` (``Diffuse``, ``LowerZone``, ``Normal``); returns the
    view folder. Each split holds every class when it has at least ``len(classes)`` images."""
    from deepcovidxr.contract.layout import DataTree, Split
    from deepcovidxr.imaging.preprocess import lanczos_resize
    from deepcovidxr.imaging.reader import write_gray

    tree = DataTree(root)
    bounds = [round(f * count) for f in (splits[0], splits[0] + splits[1])]
    for index in range(count):
        name, phantom, image = class_phantom_for_index(index, seed, opacity_boost, classes)
        if view == "crop":
            image = true_crop_box(phantom.lung_mask).crop(image)
        split = Split.TRAIN if index < bounds[0] else Split.VALIDATION if index < bounds[1] else Split.TEST
        write_gray(tree.split_dir(size, view, split) / name / f"phantom_{index:04d}.png", lanczos_resize(image, size))
    return tree.view_dir(size, view)


def gradcam_pointing(
    member_file: Path, view_dir: Path, layer: str, seed: int = 0, splits: tuple[str, ...] = ("Validation", "Test")
) -> dict:
    """Grad-CAM of one crop-view member on the positives of ``splits``, placed back into the
    256 px phantoms. Returns the fraction of peaks inside an opacity (``inside``), the chance of
    that for a peak anywhere in the crop box (``chance``), the fraction in the lower half of a
    lung side holding an opacity (``lower_zone``), the fraction of positives for which a node of the
    map's grid lies inside an opacity at all (``grid_ceiling``: what a perfect map of that
    resolution could reach, since a bilinearly upsampled map peaks on a node), the median
    peak-to-opacity distance in pixels, the fraction of positives the member scores above 0.5
    (``detected``) and the side of the layer's map (``map_side``)."""
    from deepcovidxr.explain.gradcam import member_cams, to_original
    from deepcovidxr.imaging.preprocess import to_model_input
    from deepcovidxr.imaging.reader import read_gray
    from deepcovidxr.networks.members import load_member

    model = load_member(member_file)
    map_side = int(model.get_layer(layer).output.shape[1])
    files = [f for split in splits for f in sorted((Path(view_dir) / split / "Positive").glob("*.png"))]
    inside, chance, lower_zone, distance, scores, reachable = [], [], [], [], [], []
    for start in range(0, len(files), 16):
        chunk = files[start : start + 16]
        cams, _, chunk_scores = member_cams(model, layer, np.stack([to_model_input(read_gray(f)) for f in chunk]))
        scores.extend(chunk_scores.tolist())
        for path, cam in zip(chunk, cams, strict=True):
            phantom, _ = phantom_for_index(int(re.search(r"\d+", path.stem).group()), seed)
            box = true_crop_box(phantom.lung_mask)
            heatmap = to_original(cam, phantom.image.shape, (box.x0, box.y0, box.x1, box.y1))
            y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
            opacity = phantom.opacity_mask > 0
            inside.append(bool(opacity[y, x]))
            nodes = np.ix_(grid_nodes(box.y0, box.y1, map_side), grid_nodes(box.x0, box.x1, map_side))
            reachable.append(bool(opacity[nodes].any()))
            chance.append(float(opacity[box.y0 : box.y1, box.x0 : box.x1].mean()))
            ys, xs = np.nonzero(opacity)
            distance.append(float(np.min(np.hypot(ys - y, xs - x))))
            centre_x = (box.x0 + box.x1) / 2
            affected_sides = {bool(c < centre_x) for c in xs}
            lower_zone.append(bool(y > (box.y0 + box.y1) / 2 and bool(x < centre_x) in affected_sides))
    return {
        "positives": len(files),
        "map_side": map_side,
        "inside": float(np.mean(inside)),
        "grid_ceiling": float(np.mean(reachable)),
        "chance": float(np.mean(chance)),
        "lower_zone": float(np.mean(lower_zone)),
        "median_distance_px": float(np.median(distance)),
        "detected": float(np.mean(np.asarray(scores) > 0.5)),
    }


def grid_nodes(start: int, stop: int, cells: int) -> np.ndarray:
    """Pixel rows (or columns) of the cell centres of a ``cells``-wide map stretched over
    [start, stop) with half-pixel-centred resizing, as :func:`deepcovidxr.explain.gradcam.to_original` does."""
    return np.round(start + (np.arange(cells) + 0.5) * (stop - start) / cells - 0.5).astype(int)
