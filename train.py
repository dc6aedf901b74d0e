"""Train one ensemble member (two phases) into <Prefix>_<size>_up_<crop>.h5.

Example:
    python train.py -m ResNet-50 -s 224 -p dataset/224/crop -o members/ -hy tuning/hyperparameters.json

Every flag and its default: python train.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("train", argv)


if __name__ == "__main__":
    sys.exit(main())
