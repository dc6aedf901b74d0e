"""Train one ensemble member in two phases (frozen backbone, then everything) and write it as
<output>/<Prefix>_<size>_up_<crop>.h5 with its curves, CSV log, TensorBoard logs and config.

Example:
    python train.py -m ResNet-50 -s 224 -p dataset/224/crop -o members/ -w nih_weight_ResNet-50_224.h5 \\
        -hy tuner_out/hyperparameters.json --class-weight

Multi-node (one process per node, TF_CONFIG set per process; see README "Multi-node training"):
    python train.py -m ResNet-50 -s 224 -p dataset/224/crop -o members/ --multi-worker
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    from deepcovidxr.backbones import NAMES

    p = cli.parser(__doc__)
    p.add_argument("-m", "--model", required=True, choices=NAMES, help="backbone")
    p.add_argument("-s", "--size", type=int, required=True, help="input side in pixels (224 or 331 for the ensemble)")
    p.add_argument(
        "-p",
        "--path",
        type=cli.existing_path,
        required=True,
        help="folder holding Train/ and Validation/ (e.g. dataset/224/crop)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (members of all views can share it)")
    p.add_argument(
        "-w",
        "--weight_path",
        default=None,
        help="initial weights: imagenet (needs a download), a file (keras.applications ImageNet no-top .h5, "
        "nih_weight_<Model>_<size>.h5 from pretrain.py, or a member .h5), or none (default: none)",
    )
    p.add_argument(
        "-hy",
        "--hyperparameters",
        type=Path,
        default=None,
        help="hyperparameters.json or the original's hyperparameters.pickle (keys dropout_rate, "
        "learning_rate, momentum); default lr 1e-3, momentum 0.9, dropout 0.3",
    )
    p.add_argument(
        "--crop",
        choices=("crop", "uncrop"),
        default=None,
        help="the view, for the output name (default: inferred from --path)",
    )
    cli.add_training(p)
    p.add_argument("--learning-rate", type=float, default=None, help="overrides the hyperparameters file")
    p.add_argument("--momentum", type=float, default=None, help="overrides the hyperparameters file")
    p.add_argument("--dropout", type=float, default=None, help="overrides the hyperparameters file")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="do not cache decoded images in memory")
    p.add_argument(
        "--multi-worker",
        action="store_true",
        help="multi-node data parallelism with MultiWorkerMirroredStrategy, configured by TF_CONFIG",
    )
    cli.add_seed(p)
    cli.add_overwrite(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.training import TrainConfig, train

    config = TrainConfig(
        model=args.model,
        size=args.size,
        path=args.path,
        output=args.output,
        weights=args.weight_path,
        hyperparameters=args.hyperparameters,
        crop=args.crop,
        seed=args.seed,
        learning_rate=args.learning_rate,
        momentum=args.momentum,
        dropout=args.dropout,
        cache=args.cache,
        overwrite=args.overwrite,
        **cli.training_options(args),
        multi_worker=args.multi_worker,
    )
    return cli.run_stage(lambda: train(config))


if __name__ == "__main__":
    sys.exit(main())
