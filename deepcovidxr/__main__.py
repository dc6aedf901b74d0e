"""``python -m deepcovidxr STAGE [flags]``."""

import sys

from deepcovidxr.cli import dispatch

if __name__ == "__main__":
    sys.exit(dispatch())
