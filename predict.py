"""Predict COVID-19 suspicion for a file or a folder of chest X-rays.

Example:
    python predict.py -w weights/ -i new_images/ -o predictions/

Every flag and its default: python predict.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("predict", argv)


if __name__ == "__main__":
    sys.exit(main())
