"""Crop chest X-rays to a square box around the lungs found by a U-Net.

Walks -f recursively and writes, under -o, the square lung crop of every image with the same
relative path and file name (DICOM input becomes PNG), a per-file crop_report.csv (status ok,
one_lung, fallback or error, the box, the lung fraction) and a QC montage crop_qc.png.
Nothing is written into the input folder. A rerun skips files already done.

Example:
    python crop_img.py -f raw_images/ -o cropped/ --save-masks masks/
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument(
        "-f",
        "--folder",
        type=cli.existing_path,
        required=True,
        help="an image file or a folder of images (PNG, JPEG, BMP, TIFF, DICOM), searched recursively",
    )
    p.add_argument(
        "-U",
        "--Unet",
        type=Path,
        default=None,
        help="U-Net weights: our lung_unet.weights.h5 (default: the one shipped in unet/) "
        "or the original imlab trained_model.hdf5",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, help="output folder (created; must lie outside the input)"
    )
    p.add_argument(
        "--save-masks",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each predicted lung mask (0/255 PNG, original resolution, same relative path) here",
    )
    p.add_argument(
        "--legacy-names",
        action="store_true",
        help="write the original's crop/<stem>_crop<ext> and crop_squared/<stem>_crop_squared<ext> instead",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per U-Net batch (default 16)")
    p.add_argument("--no-qc", dest="qc_montage", action="store_false", help="do not write the crop_qc.png montage")
    cli.add_precision(p)
    cli.add_workers(p)
    cli.add_overwrite(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.cropping import CropConfig, run_crop

    config = CropConfig(
        input=args.folder,
        output=args.output,
        unet=args.Unet,
        save_masks=args.save_masks,
        legacy_names=args.legacy_names,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        workers=args.workers,
        qc_montage=args.qc_montage,
        precision=args.precision,
    )
    return cli.run_stage(lambda: run_crop(config))


if __name__ == "__main__":
    sys.exit(main())
