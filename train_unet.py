"""Train the lung U-Net shipped in unet/ on image/mask pairs.

Example:
    python train_unet.py --data ../shared/data/lungmasks --output unet --epochs 40
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument(
        "--data",
        type=cli.existing_path,
        required=True,
        help="folder with manifest.csv (columns image, mask) or */images + */masks with matching names",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=Path("unet"),
        help="where lung_unet.weights.h5 and lung_unet.json go (default unet/)",
    )
    p.add_argument(
        "--architecture",
        choices=("light", "imlab"),
        default="light",
        help="light: narrower decoder with batch-norm (default, shipped); imlab: the original 5.5 M U-Net",
    )
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    p.add_argument(
        "--learning-rate", type=float, default=2e-3, help="Adam peak learning rate, cosine-decayed (default 2e-3)"
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.15,
        help="fraction of pairs per data set held out for validation (default 0.15)",
    )
    p.add_argument(
        "--no-mixed-precision",
        dest="mixed_precision",
        action="store_false",
        help="train in float32 instead of mixed bfloat16",
    )
    p.add_argument(
        "--init",
        type=cli.existing_path,
        default=None,
        help="start from these U-Net weights (ours, or imlab's trained_model.hdf5 with --architecture imlab) "
        "instead of random ones, e.g. to fine-tune on your own masks",
    )
    p.add_argument(
        "--pathology-probability",
        type=cli.probability,
        default=0.5,
        help="chance per training image of painted lung opacities (and, half as often, tubes and wires); "
        "the mask stays the whole lung, so opacified lung is segmented as lung (default 0.5; 0 turns it off)",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs (smoke tests)")
    cli.add_seed(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.lungs.train import UnetTrainConfig, train_unet

    options = {k: v for k, v in vars(args).items() if k != "verbose"}
    return cli.run_stage(lambda: train_unet(UnetTrainConfig(**options)))


if __name__ == "__main__":
    sys.exit(main())
