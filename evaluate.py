"""Evaluate the ensemble on the Test split of a dataset tree.

Example:
    python evaluate.py -w weights/ -i dataset/ -o evaluation/ -t 10

Every flag and its default: python evaluate.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
