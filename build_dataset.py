"""Build the training tree {224,331}/{crop,uncrop}/{Train,Validation,Test}/{Negative,Positive}
from a folder of raw images and a labels table, in one command.

The labels CSV needs columns file (path relative to --images) and label (Positive/Negative or
1/0), and should have patient_id: patients, not files, are split (seeded, stratified by label).
Each image is cropped by the lung U-Net once and written in all four views under one name.
<output>/split_manifest.csv records every file's split, crop status and errors.

Example:
    python build_dataset.py --images raw/ --labels raw/labels.csv -o dataset/ --split 0.7 0.15 0.15
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument(
        "--images", type=cli.existing_path, required=True, help="folder the labels table's file column is relative to"
    )
    p.add_argument(
        "--labels", type=cli.existing_path, required=True, help="CSV with file, label and (recommended) patient_id"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset root to create")
    p.add_argument("-U", "--Unet", type=Path, default=None, help="U-Net weights (default: ours in unet/)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 331], help="image sizes to write (default 224 331)")
    p.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=[0.7, 0.15, 0.15],
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of patients per split (default 0.7 0.15 0.15)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per U-Net batch (default 16)")
    cli.add_seed(p)
    cli.add_precision(p)
    cli.add_workers(p)
    cli.add_overwrite(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.dataset import DatasetConfig, run_build_dataset

    config = DatasetConfig(
        images=args.images,
        labels=args.labels,
        output=args.output,
        unet=args.Unet,
        sizes=tuple(args.sizes),
        fractions=tuple(args.split),
        seed=args.seed,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
    )
    return cli.run_stage(lambda: run_build_dataset(config))


if __name__ == "__main__":
    sys.exit(main())
