"""Tune dropout, learning rate and momentum for one member with keras-tuner.

Example:
    python tuner.py -m ResNet-50 -s 224 -p dataset/224/crop -w nih_weight_ResNet-50_224.h5 -o tuning/

Every flag and its default: python tuner.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("tuner", argv)


if __name__ == "__main__":
    sys.exit(main())
