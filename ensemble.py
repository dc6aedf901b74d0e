"""Fit the ensemble's member weights on the Validation split (Dirichlet random search maximising
AUC, seeded) or use a fixed rule (mean, vote, max), then report every member and the ensemble on
the Test split. Writes Ensemble_Results/ensemble_weights.pickle (float64, canonical member order)
and ensemble_weights.json, predictions CSVs, member_auc.csv, ROC and confusion-matrix PNGs.
Research use only: not for diagnosis.

Example:
    python ensemble.py -w weights/ -d dataset/ -o ensemble_out/ --draws 10000 --seed 0
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepcovidxr import cli


def build_parser():
    p = cli.parser(__doc__)
    p.add_argument("-w", "--weight", type=cli.existing_path, required=True, help="folder holding the member files")
    p.add_argument(
        "-d",
        "--data",
        type=cli.existing_path,
        required=True,
        help="dataset root holding {224,331}/{crop,uncrop}/{Validation,Test}/{Negative,Positive}",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder (default: current folder)")
    p.add_argument(
        "--method",
        choices=("weighted", "mean", "vote", "max"),
        default="weighted",
        help="weighted: Dirichlet search on Validation (default); mean: soft mean; vote: hard vote; max",
    )
    p.add_argument("--draws", type=int, default=10_000, help="Dirichlet draws (default 10000)")
    p.add_argument("--members", nargs="+", default=(), help="only these members (default: every member file found)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    cli.add_seed(p)
    cli.add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args.verbose)
    from deepcovidxr.inference import EnsembleConfig, run_ensemble

    config = EnsembleConfig(
        weights=args.weight,
        data=args.data,
        output=args.output,
        method=args.method,
        draws=args.draws,
        members=tuple(args.members),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    return cli.run_stage(lambda: run_ensemble(config))


if __name__ == "__main__":
    sys.exit(main())
