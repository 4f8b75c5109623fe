"""This CPU's instruction-set flags (/proc/cpuinfo), read once: what kernels it can run natively."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The `flags` of the first processor in /proc/cpuinfo; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # bf16 multiply-accumulate in hardware, not emulated


def native_bf16(flags=None) -> bool:
    """Whether this CPU (or one with `flags`) computes bf16 natively; x86 only (elsewhere: False)."""
    flags = cpu_flags() if flags is None else flags
    return platform.machine().lower() in ("x86_64", "amd64") and any(flag in flags for flag in NATIVE_BF16)
