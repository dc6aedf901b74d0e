"""Training input pipeline throughput against the ResNet-50 train-step rate, at 224 and 331.

For each size: the real chest X-rays of ../shared/data/cxr are Lanczos-resized into a temporary
Train/{Negative,Positive} folder; then the training tf.data pipeline (decode, cache, shuffle,
augment, normalise, prefetch) is timed over its second and later epochs (the cache is warm), with
all cores and with one core, and a ResNet-50 member's train step is timed on the same batch size.
Reported: augmented images/s, images/s per core, the train-step images/s and the ratio
(target: pipeline >= 3x the step rate on this machine). Per-core throughput divided into a
GPU's step rate says how many cores keep one GPU fed.

Example:
    python benchmarks/bench_input_pipeline.py --batches 40
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _tree(source: Path, target: Path, size: int) -> int:
    from deepcovidxr.imaging.preprocess import lanczos_resize
    from deepcovidxr.imaging.reader import read_gray, write_gray

    count = 0
    for label in ("Negative", "Positive"):
        for path in sorted((source / label).iterdir()):
            if path.suffix.lower() in {".png", ".jpg", ".jpeg"}:
                write_gray(target / "Train" / label / (path.stem + ".png"), lanczos_resize(read_gray(path), size))
                count += 1
    return count


def _pipeline_rate(files, size: int, batch: int, batches: int, threads: int | None) -> float:
    import tensorflow as tf

    from deepcovidxr.data.tfdata import make_dataset

    ds = make_dataset(files, size, batch, training=True, seed=0, repeat=True)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        ds = ds.with_options(options)
    iterator = iter(ds)
    for _ in range(max(1, len(files) // batch + 1)):  # first epoch: fills the cache
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def _step_rate(size: int, batch: int, steps: int) -> float:
    import keras

    from deepcovidxr.networks.members import build_member
    from deepcovidxr.training.trainer import compile_member

    model = build_member("ResNet-50", size)
    compile_member(model, 1e-3, 0.9)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = (rng.random(batch) < 0.5).astype("float32")
    for _ in range(2):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    rate = steps * batch / (time.perf_counter() - start)
    del model
    keras.backend.clear_session()
    return rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=40, help="timed pipeline batches per measurement")
    p.add_argument("--steps", type=int, default=6, help="timed ResNet-50 train steps per size")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 331])
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from deepcovidxr.data.tfdata import list_split

    cores = os.cpu_count() or 1
    print(f"{cores} cores, batch {args.batch_size}, images from {args.data}")
    print(
        f"{'size':>5}{'pipeline img/s':>16}{'1-core img/s':>14}{'img/s/core':>12}"
        f"{'ResNet-50 step img/s':>22}{'ratio':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            root = Path(tmp) / str(size)
            _tree(args.data, root, size)
            files = list_split(root, "Train")
            all_cores = _pipeline_rate(files, size, args.batch_size, args.batches, threads=None)
            one_core = _pipeline_rate(files, size, args.batch_size, args.batches, threads=1)
            step = _step_rate(size, args.batch_size, args.steps)
            print(
                f"{size:>5}{all_cores:>16.1f}{one_core:>14.1f}{all_cores / cores:>12.1f}{step:>22.1f}"
                f"{all_cores / step:>8.1f}"
            )
    print("target: pipeline >= 3x the train-step rate; cores per GPU ~ (GPU step img/s) / (1-core img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
