"""What the machine's processors can do fast: native bfloat16 on the CPU, a GPU for TensorFlow.

bfloat16 without native kernels (no avx512_bf16 or AMX) is emulated and slower than float32: the
U-Net's training step on such a CPU (AMD EPYC, AVX2) took 37 s in mixed bfloat16 against 10 s in
float32, so ``--precision auto`` only mixes where it pays (:mod:`deepcovidxr.runtime.precision`).
"""

from __future__ import annotations

from pathlib import Path


def cpu_supports_bf16(core=None) -> bool:
    """The CPU has native bfloat16 kernels (avx512_bf16 or AMX). ``core``: an OpenVINO Core, whose
    CPU plugin says so in its capabilities; else (or if it cannot tell) /proc/cpuinfo's flags."""
    if core is not None:
        try:
            return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except RuntimeError:
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpu_available() -> bool:
    """TensorFlow sees a GPU (imports TensorFlow: ask only where a stage trains)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
