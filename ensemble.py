"""Fit the ensemble weights on Validation and report on Test.

Example:
    python ensemble.py -w weights/ -d dataset/ -o ensemble_out/ --draws 10000 --seed 0

Every flag and its default: python ensemble.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("ensemble", argv)


if __name__ == "__main__":
    sys.exit(main())
