"""Build the {224,331}/{crop,uncrop}/{Train,Validation,Test}/{Negative,Positive} tree from raw images
and a labels table.

Example:
    python build_dataset.py --images raw/ --labels raw/labels.csv -o dataset/ --split 0.7 0.15 0.15

Every flag and its default: python build_dataset.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("build_dataset", argv)


if __name__ == "__main__":
    sys.exit(main())
