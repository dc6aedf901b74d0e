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


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Positive", Label.POSITIVE),
        ("1", Label.POSITIVE),
        ("covid", Label.POSITIVE),
        ("negative", Label.NEGATIVE),
        ("0", Label.NEGATIVE),
    ],
)
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


SPEC_ORDER = [  # SPEC s.14: member, file
    ("dense_224_uncrop", "DenseNet_224_up_uncrop.h5"),
    ("dense_224_crop", "DenseNet_224_up_crop.h5"),
    ("dense_331_uncrop", "DenseNet_331_up_uncrop.h5"),
    ("dense_331_crop", "DenseNet_331_up_crop.h5"),
    ("res_224_uncrop", "ResNet50_224_up_uncrop.h5"),
    ("res_224_crop", "ResNet50_224_up_crop.h5"),
    ("res_331_uncrop", "ResNet50_331_up_uncrop.h5"),
    ("res_331_crop", "ResNet50_331_up_crop.h5"),
    ("inception_224_uncrop", "Inception_224_up_uncrop.h5"),
    ("inception_224_crop", "Inception_224_up_crop.h5"),
    ("inception_331_uncrop", "Inception_331_up_uncrop.h5"),
    ("inception_331_crop", "Inception_331_up_crop.h5"),
    ("inceptionresnet_224_uncrop", "InceptionResNet_224_up_uncrop.h5"),
    ("inceptionresnet_224_crop", "InceptionResNet_224_up_crop.h5"),
    ("inceptionresnet_331_uncrop", "InceptionResNet_331_up_uncrop.h5"),
    ("inceptionresnet_331_crop", "InceptionResNet_331_up_crop.h5"),
    ("xception_224_uncrop", "Xception_224_up_uncrop.h5"),
    ("xception_224_crop", "Xception_224_up_crop.h5"),
    ("xception_331_uncrop", "Xception_331_up_uncrop.h5"),
    ("xception_331_crop", "Xception_331_up_crop.h5"),
    ("efficient_224_uncrop", "EfficientNet_224_up_uncrop.h5"),
    ("efficient_224_crop", "EfficientNet_224_up_crop.h5"),
    ("efficient_331_uncrop", "EfficientNet_331_up_uncrop.h5"),
    ("efficient_331_crop", "EfficientNet_331_up_crop.h5"),
]


def test_canonical_member_order_and_file_names() -> None:
    from deepcovidxr.layout import ensemble_members

    assert [(m.short_name, m.legacy_filename) for m in ensemble_members()] == SPEC_ORDER


def test_member_names_parse_back() -> None:
    from deepcovidxr.layout import Member, ensemble_members

    for member in ensemble_members():
        assert Member.parse(member.short_name) == member == Member.parse(member.legacy_filename)
    with pytest.raises(ValueError, match="not a member name"):
        Member.parse("ResNet50_final.h5")
