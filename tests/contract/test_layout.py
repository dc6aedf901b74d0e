from pathlib import Path

import pytest

from deepcovidxr.contract.layout import CropMode, DataTree, Label, Split, ensemble_members, legacy_crop_names


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
    from deepcovidxr.contract.layout import ensemble_members

    assert [(m.short_name, m.legacy_filename) for m in ensemble_members()] == SPEC_ORDER


def test_member_names_parse_back() -> None:
    from deepcovidxr.contract.layout import Member, ensemble_members

    for member in ensemble_members():
        assert Member.parse(member.short_name) == member == Member.parse(member.legacy_filename)
    with pytest.raises(ValueError, match="not a member name"):
        Member.parse("ResNet50_final.h5")


# ---- every output path comes from layout and names its member back (issue 10) ------------------

MEMBERS = [pytest.param(m, id=m.short_name) for m in ensemble_members()]


@pytest.mark.parametrize("member", MEMBERS)
def test_member_output_paths_parse_back(member, tmp_path: Path) -> None:
    from deepcovidxr.contract.layout import Member
    from deepcovidxr.contract.run_paths import RunPaths, TunerPaths

    assert Member.parse(member.short_name) == member == Member.parse(member.legacy_filename)
    run = RunPaths(tmp_path, member)
    named = [run.final, run.checkpoint("initial"), run.checkpoint("final"), run.worker_copy(tmp_path / "w", 1)]
    assert all(Member.parse(p.name) == member for p in named)
    assert Member.parse(run.stem) == member == Member.parse(run.plots("final").name)
    assert Member.parse(run.tensorboard.name) == member
    assert run.checkpoint("initial").parent == tmp_path / "save_weights_initial"
    for path in (run.log_csv, run.curves, run.config):
        assert path.parent == tmp_path and Member.parse(path.name.rsplit("_", 1)[0]) == member
    tuner = TunerPaths(tmp_path, member)
    assert Member.parse(tuner.project) == member == Member.parse(tuner.warmup.name) == Member.parse(tuner.best.name)
    assert tuner.hyperparameters.relative_to(tmp_path).parts == (
        "tuner",
        "best_models_and_params",
        tuner.project,
        "model_params",
        "hyperparameters.json",
    )


def test_no_two_members_share_an_output_path(tmp_path: Path) -> None:
    from deepcovidxr.contract.run_paths import PHASES, RunPaths, TunerPaths

    paths = []
    for member in ensemble_members():
        run, tuner = RunPaths(tmp_path, member), TunerPaths(tmp_path, member)
        paths += [run.final, run.log_csv, run.curves, run.config, run.tensorboard, tuner.warmup, tuner.best]
        paths += [p for phase in PHASES for p in (run.checkpoint(phase), run.plots(phase), run.history(phase))]
    assert len(paths) == len(set(paths)) == 24 * 13


def test_tuner_writes_where_train_reads(tmp_path: Path) -> None:
    """The tuned-values path was spelled twice (tuning.py wrote it, training.py rebuilt it)."""
    from deepcovidxr.config import hyperparams
    from deepcovidxr.contract.run_paths import TunerPaths
    from deepcovidxr.training.trainer import member_hyperparameters

    tuned, untuned = ensemble_members()[5], ensemble_members()[6]
    json_path, _ = hyperparams.save(
        hyperparams.Hyperparameters(dropout_rate=0.25), TunerPaths(tmp_path, tuned).params_dir
    )
    assert json_path == TunerPaths(tmp_path, tuned).hyperparameters
    assert member_hyperparameters(tmp_path, tuned) == json_path
    assert member_hyperparameters(tmp_path, untuned) is None


def test_pretrain_names_parse_back(tmp_path: Path) -> None:
    from deepcovidxr.contract.backbones import BACKBONES
    from deepcovidxr.contract.layout import SIZES
    from deepcovidxr.contract.run_paths import PretrainPaths
    from deepcovidxr.training.pretraining import checkpoint_name

    for backbone in BACKBONES:
        for size in (*SIZES, 75):
            paths = PretrainPaths(tmp_path, backbone.name, size)
            assert PretrainPaths.parse(paths.checkpoint) == paths
            assert checkpoint_name(backbone.name, size) == paths.checkpoint.name
            assert len({paths.checkpoint, paths.auroc, paths.log_csv, paths.summary}) == 4
    with pytest.raises(ValueError, match="nih_weight_"):
        PretrainPaths.parse(Path("ResNet50_224_up_crop.h5"))
    # train_all.py -w <folder> reads back the name pretrain.py wrote
    from deepcovidxr.training.trainer import member_weights

    member = ensemble_members()[4]
    written = PretrainPaths(tmp_path, member.backbone, member.size).checkpoint
    written.write_bytes(b"")
    assert member_weights(str(tmp_path), member) == str(written)


def test_result_folders_keep_the_original_names(tmp_path: Path) -> None:
    from deepcovidxr.contract.layout import GRADCAM_FOLDER, gradcam_dir, gradcam_names
    from deepcovidxr.contract.run_paths import EnsemblePaths, EvaluationPaths
    from deepcovidxr.scoring import weights_file

    evaluation, fitted = EvaluationPaths(tmp_path), EnsemblePaths(tmp_path)
    assert evaluation.predictions == tmp_path / "Results" / "predictions.csv"
    assert evaluation.metrics == tmp_path / "Results" / "metrics.json"
    assert fitted.weights_pickle == tmp_path / "Ensemble_Results" / "ensemble_weights.pickle"
    assert (fitted.weights_pickle.name, fitted.weights_json.name) == (
        weights_file.WEIGHTS_PICKLE,
        weights_file.WEIGHTS_JSON,
    )
    assert (
        [p.name for p in evaluation.plots]
        == [p.name for p in fitted.plots]
        == [
            "ROC_Curve.png",
            "PrecisionRecall_Curve.png",
            "Calibration.png",
            "ConfusionMatrix.png",
        ]
    )
    assert evaluation.scratch == fitted.scratch == tmp_path / ".scratch"
    assert all((tmp_path / p).parent == gradcam_dir(tmp_path) for p in gradcam_names(Path("ward/a.png")))
    assert gradcam_dir(tmp_path).name == GRADCAM_FOLDER == "gradCAM_img"
