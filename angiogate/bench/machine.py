"""The machine a bench ran on: CPU, cores, vector extensions, RAM, software versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
                      "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown", flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model or platform.processor() or "unknown", flags


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe() -> dict:
    """What the report's header shows and the JSON keeps under `machine`."""
    from angiogate.children.dcmtk import dcmtk_version

    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_flags": sorted(f for f in _FLAGS_OF_INTEREST if f in flags),
        "avx512": any(f.startswith("avx512") for f in flags),
        "amx": any(f.startswith("amx") for f in flags),
        "ram_gib": _ram_gib(),
        "load_average_at_start": _load(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "openvino": _version("openvino"),
        "pydicom": _version("pydicom"),
        "pynetdicom": _version("pynetdicom"),
        "dcmtk": dcmtk_version(),
        "nice": os.nice(0),
    }
