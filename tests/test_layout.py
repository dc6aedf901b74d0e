from pathlib import Path

import pytest

from deepcovidxr.layout import CropMode, DataTree, Label, Split, legacy_crop_names


def test_tree_paths_follow_the_original_contract(tmp_path: Path) -> None:
    tree = DataTree(tmp_path)
    assert tree.class_dir(224, "crop", "Train", "Positive") == tmp_path / "224" / "crop" / "Train" / "Positive"
    assert tree.view_dir(331, CropMode.UNCROP) == tmp_path / "331" / "uncrop"
    assert len(list(tree.leaf_dirs())) == 2 * 2 * 3 * 2


def test_check_lists_every_missing_folder(tmp_path: Path) -> None:
    tree = DataTree(tmp_path)
    for leaf in tree.leaf_dirs():
        leaf.mkdir(parents=True)
    tree.check()
    (tmp_path / "331" / "crop" / "Test" / "Negative").rmdir()
    assert tree.missing() == [tmp_path / "331" / "crop" / "Test" / "Negative"]
    with pytest.raises(FileNotFoundError, match="331/crop/Test/Negative"):
        tree.check()


@pytest.mark.parametrize(("text", "label"), [("Positive", Label.POSITIVE), ("1", Label.POSITIVE), ("covid", Label.POSITIVE),
                                              ("negative", Label.NEGATIVE), ("0", Label.NEGATIVE)])
def test_label_parsing(text: str, label: Label) -> None:
    assert Label.parse(text) is label


def test_label_index_is_keras_alphabetical_order() -> None:
    assert sorted(Label, key=lambda lab: lab.value) == [Label.NEGATIVE, Label.POSITIVE]
    assert [lab.index for lab in (Label.NEGATIVE, Label.POSITIVE)] == [0, 1]
    with pytest.raises(ValueError, match="unrecognised label"):
        Label.parse("maybe")


def test_split_values_are_folder_names() -> None:
    assert [s.value for s in Split] == ["Train", "Validation", "Test"]


def test_legacy_crop_names_keep_subfolders() -> None:
    tight, square = legacy_crop_names(Path("ward/a.jpg"))
    assert tight == Path("crop/ward/a_crop.jpg")
    assert square == Path("crop_squared/ward/a_crop_squared.jpg")
