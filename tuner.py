"""Search dropout, learning rate and momentum for one member with keras-tuner (Bayesian
optimisation on validation AUC), after a frozen-backbone warm-up. Writes
<out>/tuner/best_models_and_params/<stem>/model_params/hyperparameters.json and the original's
hyperparameters.pickle; train.py takes either with -hy.

Example:
    python tuner.py -m ResNet-50 -s 224 -p dataset/224/crop -w nih_weight_ResNet-50_224.h5 -o tuning/

Distributed search (keras-tuner's chief/worker mode): start one chief and N workers with the
same command and these variables (see README "Distributed tuning"):
    KERASTUNER_TUNER_ID=chief|tuner0|tuner1...  KERASTUNER_ORACLE_IP=<chief host>  KERASTUNER_ORACLE_PORT=8000
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    from deepcovidxr.backbones import NAMES

    p = cli.parser(__doc__)
    p.add_argument("-m", "--model", required=True, choices=NAMES, help="backbone")
    p.add_argument("-s", "--size", type=int, required=True, help="input side in pixels (224 or 331)")
    p.add_argument(
        "-p",
        "--path",
        type=cli.existing_path,
        required=True,
        help="folder holding Train/ and Validation/ (e.g. dataset/224/crop)",
    )
    p.add_argument(
        "-w",
        "--weights",
        default=None,
        help="initial weights: nih_weight_<Model>_<size>.h5, a member .h5, a keras.applications ImageNet "
        "no-top .h5, imagenet (download) or none (default)",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder (default: current folder)")
    p.add_argument("--crop", choices=("crop", "uncrop"), default=None, help="the view (default: inferred from --path)")
    p.add_argument("--max-trials", type=int, default=20, help="hyperparameter combinations to try (default 20)")
    p.add_argument("--epochs", type=int, default=10, help="most epochs per trial (default 10)")
    p.add_argument(
        "--warmup-epochs", type=int, default=50, help="most epochs of the frozen-backbone warm-up (default 50)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="do not cache decoded images in memory")
    cli.add_seed(p)
    cli.add_overwrite(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.tuning import TuneConfig, run_tuner

    config = TuneConfig(
        model=args.model,
        size=args.size,
        path=args.path,
        output=args.output,
        weights=args.weights,
        crop=args.crop,
        max_trials=args.max_trials,
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        cache=args.cache,
        overwrite=args.overwrite,
    )
    return cli.run_stage(lambda: run_tuner(config))


if __name__ == "__main__":
    sys.exit(main())
