"""Crop chest X-rays to a square box around the lungs found by a U-Net.

Example:
    python crop_img.py -f raw_images/ -o cropped/ --save-masks masks/

Every flag and its default: python crop_img.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("crop_img", argv)


if __name__ == "__main__":
    sys.exit(main())
