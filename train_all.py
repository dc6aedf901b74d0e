"""Train all 24 ensemble members (or a chosen subset) one after another with train.py's schedule.
Finished members are skipped, so rerunning the same command resumes an interrupted run.

-w may be a folder of pretrain.py outputs (nih_weight_<Model>_<size>.h5, chosen per member) and
-hy a tuner.py output folder (each member's tuned values) or one file for all.

Example:
    python train_all.py -d dataset/ -o members/ -w pretrained/ -hy tuning/ --members res_224_crop dense_331_uncrop
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument(
        "-d", "--data", type=cli.existing_path, required=True, help="dataset root holding {224,331}/{crop,uncrop}/"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="folder the _up_ member files go to")
    p.add_argument(
        "--members",
        nargs="+",
        default=(),
        help="members to train, e.g. res_224_crop or ResNet50_224_up_crop.h5 (default: all 24)",
    )
    p.add_argument(
        "-w",
        "--weight_path",
        default=None,
        help="initial weights: a folder of nih_weight_<Model>_<size>.h5, one file, imagenet or none (default)",
    )
    p.add_argument(
        "-hy",
        "--hyperparameters",
        type=Path,
        default=None,
        help="a tuner.py output folder (per member) or one hyperparameters file for all",
    )
    cli.add_training(p)
    cli.add_seed(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.training import TrainAllConfig, train_all

    common = {**cli.training_options(args), "seed": args.seed}
    config = TrainAllConfig(
        data=args.data,
        output=args.output,
        members=tuple(args.members),
        weights=args.weight_path,
        hyperparameters=args.hyperparameters,
        common=common,
    )
    return cli.run_stage(lambda: train_all(config))


if __name__ == "__main__":
    sys.exit(main())
