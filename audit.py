"""Audit an ensemble on one split of a dataset tree: does it read the lungs or the hospital?

Example:
    python audit.py -w weights/ -e ensemble_out/Ensemble_Results/ensemble_weights.json -i dataset/ -o audit/
    python audit.py -w weights/ -i dataset/ -o audit/ --sites sites.csv --strict   # exit 3 when a check is flagged

Every flag and its default: python audit.py --help. Passing the audit is no evidence of clinical
validity. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("audit", argv)


if __name__ == "__main__":
    sys.exit(main())
