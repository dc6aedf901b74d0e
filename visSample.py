"""Grad-CAM heatmaps of the ensemble for chest X-rays (a file or a folder): per image,
gradCAM_img/<stem>_gradCAM.png (input, heatmap, overlay) and the raw heatmap (<stem>_heatmap.npy
in [0, 1] and <stem>_heatmap.png), fused over the members with the ensemble weights, crop-view
maps placed back in original-image coordinates. Research use only: not for diagnosis.

Example:
    python visSample.py -w weights/ -p images/ -o explanations/ --target predicted
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("-w", "--weight", type=cli.existing_path, required=True, help="folder holding the member files")
    p.add_argument("-p", "--path", type=cli.existing_path, required=True, help="an image file or a folder (recursive)")
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder (default: current folder)")
    cli.add_ensemble_weight(p, " for the Grad-CAM fusion")
    cli.add_members(p)
    p.add_argument(
        "--target",
        choices=("positive", "negative", "predicted"),
        default="predicted",
        help="class whose evidence is shown (default: the ensemble's predicted class)",
    )
    p.add_argument("-U", "--Unet", type=Path, default=None, help="U-Net weights (default: ours in unet/)")
    cli.add_precision(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.explain import GradcamConfig, run_gradcam

    config = GradcamConfig(
        weights=args.weight,
        path=args.path,
        output=args.output,
        ensemble_weights=args.ensemble_weight,
        members=tuple(args.members),
        target=args.target,
        unet=args.Unet,
        precision=args.precision,
    )
    return cli.run_stage(lambda: run_gradcam(config))


if __name__ == "__main__":
    sys.exit(main())
