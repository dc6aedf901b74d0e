"""One reader for every stage: a 16-bit copy of an 8-bit tree gives the same arrays, the same
training batches and the same evaluation scores; hidden files are skipped by every listing."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepcovidxr.contract.layout import Member, Split
from tests.support.helpers import make_phantom_tree

RAMP = np.tile(np.arange(256, dtype=np.uint8), (8, 1))  # every 8-bit level
MEMBER = "res_224_uncrop"


def _png16(path: Path, values: np.ndarray) -> Path:
    image = Image.fromarray(values.astype(np.uint16))
    assert image.mode.startswith("I;16")
    image.save(path)
    return path


def _widen_tree(source: Path, destination: Path, factor: int = 257) -> Path:
    """A copy of a tree of 8-bit PNGs with every image stored as 16 bits (value x factor)."""
    for path in sorted(source.rglob("*.png")):
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        _png16(target, np.asarray(Image.open(path), np.uint16) * factor)
    return destination


def _litter(folder: Path) -> None:
    """What macOS, Jupyter and Windows leave in a folder: none of it is an image of the tree."""
    (folder / "._phantom_0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    checkpoints = folder / ".ipynb_checkpoints"
    checkpoints.mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(checkpoints / "phantom_9999-checkpoint.png")


# ---- reader level ------------------------------------------------------------------------------


def test_16bit_png_of_an_8bit_image_reads_as_that_image(tmp_path: Path) -> None:
    from deepcovidxr.imaging.reader import read_gray

    for name, values in {"full": RAMP, "dark": RAMP // 4, "bright": RAMP // 2 + 128}.items():
        eight = tmp_path / f"{name}8.png"
        Image.fromarray(values).save(eight)
        np.testing.assert_array_equal(read_gray(eight), values)
        for factor in (257, 256):  # widened the standard way, and shifted into the high byte
            wide = _png16(tmp_path / f"{name}_{factor}.png", values.astype(np.uint16) * factor)
            np.testing.assert_array_equal(read_gray(wide), values, err_msg=f"{name} x{factor}")


def test_12bit_data_read_the_same_stored_low_or_high_in_16_bits(tmp_path: Path) -> None:
    from deepcovidxr.imaging.reader import read_gray, read_gray_info

    rng = np.random.default_rng(0)
    twelve = rng.integers(0, 4096, (16, 16)).astype(np.uint16)
    twelve[0, 0] = 4095
    low = read_gray(_png16(tmp_path / "low.png", twelve))
    high = read_gray(_png16(tmp_path / "high.png", twelve << 4))
    expected = np.round(twelve * (255.0 / 4095.0)).astype(np.uint8)  # the 12-bit scale, not min-max
    np.testing.assert_array_equal(low, expected)
    assert np.abs(high.astype(int) - expected).max() <= 1
    assert read_gray_info(tmp_path / "low.png")[1].window == "12-bit"


def test_every_listing_skips_hidden_files_the_same_way(tmp_path: Path) -> None:
    from deepcovidxr.data import nih
    from deepcovidxr.data.tfdata import list_split
    from deepcovidxr.imaging.reader import is_hidden, iter_input_files

    view = make_phantom_tree(tmp_path / "tree", 10, 16)
    for folder in sorted(p for p in view.glob("*/*") if p.is_dir()):
        _litter(folder)
    (view / "Train" / "Negative" / "__MACOSX").mkdir()
    (view / "Train" / "Negative" / "__MACOSX" / "x.png").write_bytes(b"junk")
    real = sorted(p for p in view.rglob("phantom_*.png") if not is_hidden(p, view))
    assert len(real) == 10 and all(p.parent.parent.parent == view for p in real)

    assert list(iter_input_files(view)) == sorted(real, key=lambda p: p.relative_to(view).parts)
    listed = [Path(f) for s in Split for f in list_split(view, s).files]
    assert sorted(listed) == real
    flat = view / "Train" / "Negative"
    assert sorted(p.name for p in nih._images_in(flat)) == sorted(p.name for p in real if p.parent == flat)
    for name in ("._x.png", ".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX/x.png", ".git/a.png"):
        assert is_hidden(view / name, view), name
    hidden_root = tmp_path / ".hidden_root"  # only the part below the listed folder counts
    assert not is_hidden(view / "a.png", view) and not is_hidden(hidden_root / "a.png", hidden_root)


def test_every_readable_suffix_reaches_the_tree_readers(tmp_path: Path) -> None:
    """Regression: training, evaluation and the ensemble listed png/jpg/jpeg only, so TIFF and BMP
    files in a tree were passed over without a word."""
    from deepcovidxr.data.tfdata import list_split
    from deepcovidxr.imaging.reader import READABLE_SUFFIXES, read_gray

    view = make_phantom_tree(tmp_path / "tree", 20, 16)
    converted = []
    for index, path in enumerate(sorted(view.rglob("phantom_*.png"))):
        suffix = (".tif", ".tiff", ".bmp", ".jpe")[index % 4]
        if suffix == ".jpe":  # JPEG readable too, whatever its spelling
            Image.open(path).save(path.with_suffix(suffix), format="JPEG", quality=95)
        else:
            Image.open(path).save(path.with_suffix(suffix))
        path.unlink()
        converted.append(path.with_suffix(suffix))
    assert {p.suffix for p in converted} <= READABLE_SUFFIXES
    listed = sorted(Path(f) for s in Split for f in list_split(view, s).files)
    assert listed == sorted(converted)
    assert all(read_gray(p).shape == (16, 16) for p in listed)


def test_links_to_folders_are_followed_once_and_loops_end(tmp_path: Path) -> None:
    """Regression: a symbolic link to a sub-folder (a site linking its exports into one tree) was
    passed over without a word; a link back up the tree must not loop."""
    from deepcovidxr.imaging.reader import iter_input_files

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(elsewhere / "linked.png")
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "here.png")
    (root / "site").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(root, target_is_directory=True)
    assert [p.relative_to(root).as_posix() for p in iter_input_files(root)] == ["here.png", "site/linked.png"]


# ---- stage level -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same phantoms at 224 px, as 8-bit PNGs and as 16-bit PNGs (x257) littered with hidden files."""
    root = tmp_path_factory.mktemp("reader")
    make_phantom_tree(root / "eight", 20, 224, seed=3)
    wide = _widen_tree(root / "eight", root / "sixteen")
    for folder in sorted(p for p in (wide / "224" / "uncrop").glob("*/*") if p.is_dir()):
        _litter(folder)
    return root / "eight", wide


def _batches(view: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    from deepcovidxr.data.tfdata import list_split, make_dataset

    files = list_split(view, split)
    dataset = make_dataset(files, 224, 4, training=False, cache=False, augmentation=None)
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in dataset), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def test_training_batches_are_the_same_for_the_8bit_and_16bit_trees(trees: tuple[Path, Path]) -> None:
    from deepcovidxr.imaging.preprocess import to_model_input
    from deepcovidxr.imaging.reader import read_gray

    eight, sixteen = trees
    for split in (Split.TRAIN, Split.TEST):
        images8, labels8 = _batches(eight / "224" / "uncrop", split)
        images16, labels16 = _batches(sixteen / "224" / "uncrop", split)
        np.testing.assert_array_equal(labels16, labels8)
        np.testing.assert_array_equal(images16, images8)
    # and the pipeline's arrays are the reader's (what prediction feeds the members)
    files = sorted((eight / "224" / "uncrop" / "Test").rglob("*.png"))
    expected = np.stack([to_model_input(read_gray(f)) for f in files])
    np.testing.assert_allclose(images8, expected, atol=1e-5)


def test_training_and_evaluation_resize_an_off_size_image_alike(tmp_path: Path) -> None:
    """A file not yet at the view's size: the training pipeline and evaluation's loader resize it
    the same way (Lanczos, as the resize stage and prediction)."""
    from deepcovidxr.data.tfdata import decode
    from deepcovidxr.imaging.preprocess import lanczos_resize
    from deepcovidxr.inference.ensemble import load_split

    view = make_phantom_tree(tmp_path / "tree", 5, 224)
    off = sorted((view / "Test").rglob("*.png"))[0]
    phantom = np.asarray(Image.open(off).resize((300, 300), Image.Resampling.BICUBIC))
    _png16(off, phantom.astype(np.uint16) * 257)
    member = Member.parse(MEMBER)
    images, store = load_split(tmp_path / "tree", Split.TEST, [(member, Path("unused"))], tmp_path / "s")
    try:
        index = images.names.index(off.relative_to(view / "Test").as_posix())
        evaluated = np.asarray(store.arrays[(224, member.crop)][index])
    finally:
        store.close()
    trained = decode(str(off), 224).numpy()[..., 0]
    np.testing.assert_array_equal(evaluated, lanczos_resize(phantom, 224))
    np.testing.assert_array_equal(trained, evaluated.astype(np.float32))


def test_evaluate_scores_the_8bit_and_16bit_trees_alike(trees: tuple[Path, Path], tmp_path: Path) -> None:
    import keras

    from deepcovidxr.config.inference_stages import EvaluateConfig
    from deepcovidxr.networks.members import build_member, save_member
    from deepcovidxr.stages.evaluate import run as run_evaluate

    member = Member.parse(MEMBER)
    weights = tmp_path / "weights"
    weights.mkdir()
    keras.utils.set_random_seed(0)
    save_member(build_member(member.backbone, member.size, weights=None), weights / member.legacy_filename, member)
    (weights / "ensemble_weights.json").write_text(json.dumps({MEMBER: 1.0}), encoding="utf-8")
    scores = {}
    for name, root in zip(("eight", "sixteen"), trees, strict=True):
        config = EvaluateConfig(
            weights=weights,
            image=root,
            output=tmp_path / name,
            ensemble_weights=weights / "ensemble_weights.json",
            batch_size=4,
            bootstrap=10,
        )
        run_evaluate(config)
        with (tmp_path / name / "Results" / "predictions.csv").open(newline="", encoding="utf-8") as handle:
            scores[name] = {row["Filenames"]: row["Scores"] for row in csv.DictReader(handle)}
    assert len(scores["eight"]) == 4
    assert scores["sixteen"] == scores["eight"]
    shutil.rmtree(tmp_path / "weights")
