"""Grad-CAM heatmaps of the ensemble for chest X-rays.

Example:
    python visSample.py -w weights/ -p images/ -o explanations/ --target predicted

Every flag and its default: python visSample.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("visSample", argv)


if __name__ == "__main__":
    sys.exit(main())
