"""Train the lung U-Net on image/mask pairs.

Example:
    python train_unet.py --data ../shared/data/lungmasks --output unet --epochs 40

Every flag and its default: python train_unet.py --help. Research use only: not for diagnosis.
"""

import sys

from deepcovidxr import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main("train_unet", argv)


if __name__ == "__main__":
    sys.exit(main())
