"""Run the whole pipeline on synthetic chest phantoms and write a page to open.

Example:
    python demo.py --output demo_output

Every flag and its default: python demo.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("demo", argv)


if __name__ == "__main__":
    sys.exit(main())
