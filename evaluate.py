"""Evaluate the ensemble on the Test split of a dataset tree: Results/predictions.csv (Filenames,
Scores, Binary prediction, Predictions, Actual, one column per member), Results/metrics.json (AUC
with a 95 % bootstrap interval, accuracy, sensitivity, specificity, PPV, NPV, F1 at 0.5 and at the
Youden threshold, Brier score) and ROC, precision-recall, calibration and confusion-matrix PNGs.
Research use only: not for diagnosis.

Example:
    python evaluate.py -w weights/ -i dataset/ -o evaluation/ -t 10
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("-w", "--weight", type=cli.existing_path, required=True, help="folder holding the member files")
    p.add_argument(
        "-i",
        "--image",
        type=cli.existing_path,
        required=True,
        help="dataset root holding {224,331}/{crop,uncrop}/Test/{Negative,Positive}",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (Results/ is written in it)")
    cli.add_ensemble_weight(p)
    cli.add_tta(p)
    cli.add_members(p)
    p.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples for the AUC interval (default 2000)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    cli.add_seed(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.inference import EvaluateConfig, run_evaluate

    config = EvaluateConfig(
        weights=args.weight,
        image=args.image,
        output=args.output,
        ensemble_weights=args.ensemble_weight,
        tta=args.tta,
        members=tuple(args.members),
        batch_size=args.batch_size,
        seed=args.seed,
        bootstrap=args.bootstrap,
    )
    return cli.run_stage(lambda: run_evaluate(config))


if __name__ == "__main__":
    sys.exit(main())
