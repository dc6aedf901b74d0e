"""Export ensemble members to ONNX, TFLite or a SavedModel for fast inference engines.

Example:
    python export.py -w weights/ -o exported/ --format onnx

Every flag and its default: python export.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("export", argv)


if __name__ == "__main__":
    sys.exit(main())
