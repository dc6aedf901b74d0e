"""What the machine's processors can do fast: native bfloat16 on the CPU, a GPU for TensorFlow.

bfloat16 without native kernels (no avx512_bf16 or AMX) is emulated and slower than float32: the
U-Net's training step on such a CPU (AMD EPYC, AVX2) took 37 s in mixed bfloat16 against 10 s in
float32, so ``--precision auto`` only mixes where it pays.
"""

from __future__ import annotations

from pathlib import Path


def cpu_supports_bf16() -> bool:
    """The CPU has native bfloat16 kernels (avx512_bf16 or AMX), by /proc/cpuinfo's flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision_pays() -> bool:
    """``--precision auto`` of the training stages: mixed precision on a GPU (mixed_float16) or on a
    CPU with native bfloat16 (mixed_bfloat16); float32 elsewhere."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU")) or cpu_supports_bf16()
