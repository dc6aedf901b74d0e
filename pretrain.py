"""Pretrain a backbone on NIH ChestX-ray14.

Example:
    python pretrain.py -m DenseNet-121 -s 224 -p /data/NIH -o pretrained/ -w imagenet

Every flag and its default: python pretrain.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("pretrain", argv)


if __name__ == "__main__":
    sys.exit(main())
