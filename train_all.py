"""Train all 24 ensemble members (or a subset), resumably.

Example:
    python train_all.py -d dataset/ -o members/ -w pretrained/ -hy tuning/

Every flag and its default: python train_all.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("train_all", argv)


if __name__ == "__main__":
    sys.exit(main())
