"""Predict COVID-19 suspicion for chest X-rays (a file or a folder, searched recursively; PNG,
JPEG, DICOM) with the 24-member ensemble. Non-interactive; never writes into the input folder.
Crop and resize happen in memory. Writes <output>/predictions.csv (Filenames relative to -i,
Scores, Binary pred, Predictions, crop_status, error, one column per member); unreadable files get
an error row and a non-zero exit code. Members run one at a time over all images, so memory does
not grow with the folder. Research use only: not for diagnosis.

Examples:
    python predict.py -w weights/ -i new_images/ -o predictions/
    python predict.py -w weights/ -i new_images/ -o pred_3/ --shard 3/8      # job-array task 3 of 8
    python predict.py --merge pred_1 pred_2 pred_3 pred_4 pred_5 pred_6 pred_7 pred_8 -o predictions/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepcovidxr import cli


def shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 3/8, not {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 1 <= K <= N")
    return k, n


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("-w", "--weight", type=Path, help="folder holding the member files <Prefix>_<size>_up_<crop>.h5")
    p.add_argument("-i", "--image", type=cli.existing_path, help="an image file or a folder (recursive)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (must lie outside the input)")
    cli.add_ensemble_weight(p)
    cli.add_tta(p)
    cli.add_members(p)
    p.add_argument(
        "--shard",
        type=shard,
        default=None,
        metavar="K/N",
        help="process only the K-th of N deterministic slices of the sorted file list",
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="SHARD_DIR",
        help="instead of predicting, join these shard outputs' predictions.csv into -o",
    )
    p.add_argument("-U", "--Unet", type=Path, default=None, help="U-Net weights (default: ours in unet/)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    cli.add_precision(p)
    cli.add_seed(p)
    cli.add_workers(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.configure_logging(args.verbose)
    if args.merge:
        from deepcovidxr.inference import merge_predictions

        return cli.run_stage(lambda: merge_predictions(args.merge, args.output))
    if args.weight is None or args.image is None:
        parser.error("-w/--weight and -i/--image are required (unless --merge)")
    from deepcovidxr.inference import PredictConfig, run_predict

    config = PredictConfig(
        weights=args.weight,
        input=args.image,
        output=args.output,
        ensemble_weights=args.ensemble_weight,
        tta=args.tta,
        shard=args.shard,
        batch_size=args.batch_size,
        unet=args.Unet,
        members=tuple(args.members),
        seed=args.seed,
        workers=args.workers,
        precision=args.precision,
    )
    return cli.run_stage(lambda: run_predict(config))


if __name__ == "__main__":
    sys.exit(main())
