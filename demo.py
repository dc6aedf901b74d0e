"""Run the pipeline on bundled synthetic chest phantoms: no data, no downloads.

Writes everything under --output and prints the path of its index.html, the page to open first.

Example:
    python demo.py --output demo_output
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument(
        "-o", "--output", type=Path, default=Path("demo_output"), help="output folder (default demo_output/)"
    )
    p.add_argument("--count", type=int, default=48, help="number of synthetic phantoms (default 48)")
    p.add_argument(
        "--members",
        nargs="+",
        default=["res_224_uncrop", "res_224_crop"],
        help="members to train (default res_224_uncrop res_224_crop)",
    )
    p.add_argument("--epochs", type=int, default=2, help="training epochs per member (default 2)")
    p.add_argument("-U", "--Unet", type=Path, default=None, help="U-Net weights (default: ours in unet/)")
    cli.add_seed(p)
    cli.add_workers(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.demo import DemoConfig, run_demo

    config = DemoConfig(
        output=args.output,
        count=args.count,
        seed=args.seed,
        members=tuple(args.members),
        epochs=args.epochs,
        unet=args.Unet,
        workers=args.workers,
    )
    return cli.run_stage(lambda: run_demo(config))


if __name__ == "__main__":
    sys.exit(main())
