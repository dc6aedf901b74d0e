"""Pretrain a backbone on NIH ChestX-ray14 (14 findings) and write nih_weight_<Model>_<size>.h5,
which tuner.py and train.py take as -w (the 14-unit head is replaced by a 1-unit head on load),
plus per-finding AUROC on the official test list (nih_auroc_<Model>_<size>.csv).

-p is the ChestX-ray14 folder as distributed: Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv),
train_val_list.txt, test_list.txt and the images, flat or in images_0NN/images/.

Example:
    python pretrain.py -m DenseNet-121 -s 224 -p /data/NIH -o pretrained/ -w imagenet
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    from deepcovidxr.backbones import NAMES

    p = cli.parser(__doc__)
    p.add_argument("-m", "-model", "--model", required=True, choices=NAMES, help="backbone")
    p.add_argument("-s", "--size", type=int, required=True, help="input side in pixels (224 or 331)")
    p.add_argument(
        "-p", "--path", type=Path, required=True, help="ChestX-ray14 folder (labels CSV, official lists, images)"
    )
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder (default: current folder)")
    p.add_argument(
        "-w",
        "--weights",
        default="imagenet",
        help="initial weights: imagenet (default; needs a download or ~/.keras/models), a keras.applications "
        "ImageNet no-top .h5 file, or none",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the 12 image archives into -p first (resumable, checksummed; about 45 GB)",
    )
    p.add_argument("--epochs", type=int, default=50, help="most epochs (default 50; early stopping after 10 flat)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="SGD learning rate (default 1e-3)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD Nesterov momentum (default 0.9)")
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="share of train_val patients held out for validation (default 0.1)",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="FILE",
        help="cache decoded, resized images in this file (speeds up epochs after the first)",
    )
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 on GPU, mixed_bfloat16 on CPU")
    cli.add_seed(p)
    cli.add_overwrite(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.pretraining import PretrainConfig, run_pretrain

    config = PretrainConfig(
        model=args.model,
        size=args.size,
        path=args.path,
        output=args.output,
        weights=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        momentum=args.momentum,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        download=args.download,
        mixed_precision=args.mixed_precision,
        cache=args.cache or False,
        overwrite=args.overwrite,
    )
    return cli.run_stage(lambda: run_pretrain(config))


if __name__ == "__main__":
    sys.exit(main())
