"""Resize images to size x size with Lanczos.

Example:
    python resize_img.py -i cropped/ -o cropped_224/ -s 224

Every flag and its default: python resize_img.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("resize_img", argv)


if __name__ == "__main__":
    sys.exit(main())
