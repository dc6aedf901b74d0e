"""Resize images to size x size with Lanczos (Pillow's antialiased filter).

Walks -i recursively and writes each image under -o with the same relative path and file name
(DICOM input becomes PNG); gray stays gray. Writes resize_report.csv. A rerun skips finished files.

Example:
    python resize_img.py -i cropped/ -o cropped_224/ -s 224
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument(
        "-i",
        "--input_path",
        type=cli.existing_path,
        required=True,
        help="an image file or a folder, searched recursively",
    )
    p.add_argument(
        "-o", "--output_path", type=Path, required=True, help="output folder (created; must lie outside the input)"
    )
    p.add_argument("-s", "--size", type=int, required=True, help="output side in pixels (224 or 331 for the ensemble)")
    cli.add_workers(p)
    cli.add_overwrite(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.resizing import ResizeConfig, run_resize

    config = ResizeConfig(args.input_path, args.output_path, args.size, args.overwrite, args.workers)
    return cli.run_stage(lambda: run_resize(config))


if __name__ == "__main__":
    sys.exit(main())
