"""The classifier on OpenVINO's CPU runtime.

Runs an OpenVINO IR that `angiogate.engines.exports` made from a checkpoint
(and checked against torch). This module only compiles and runs it, so the
serving path needs the `openvino` package alone; NNCF is needed only to make
int8 exports. The batch dimension is dynamic, so the judge can batch clips.

The precision is set explicitly at compile time: on CPUs with bf16 units
OpenVINO would otherwise compute an fp32 IR in bf16 by default. An int8
export runs its quantised layers in int8 and the rest in f32, exactly as
its agreement check ran it.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from angiogate.engines.base import Prediction, split_logits
from angiogate.engines.info import ModelInfo
from angiogate.lean_imports import OPENVINO_EXTRAS, hidden

with hidden(OPENVINO_EXTRAS):  # its model converter: serving runs IRs (angiogate.lean_imports)
    import openvino as ov

# INFERENCE_PRECISION_HINT per export precision.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
PERFORMANCE_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def openvino_version() -> str:
    """The runtime's release, e.g. '2026.4.1'."""
    return ov.__version__.split("-")[0]


def openvino_release() -> str:
    """major.minor: numerics of bf16/int8 kernels are taken to hold within one release."""
    return ".".join(openvino_version().split(".")[:2])


@lru_cache(maxsize=1)
def _core() -> ov.Core:
    return ov.Core()


@lru_cache(maxsize=1)
def cpu_precisions() -> frozenset[str]:
    """The precisions OpenVINO's CPU plugin computes natively here (fp32 always)."""
    capabilities = set(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    found = {"fp32"}
    if "BF16" in capabilities:
        found.add("bf16")
    if "INT8" in capabilities:
        found.add("int8")
    return frozenset(found)


def cpu_name() -> str:
    return str(_core().get_property("CPU", "FULL_DEVICE_NAME"))


# Instruction sets that decide which bf16/int8 kernels OpenVINO runs, hence their exact numbers.
_KERNEL_ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_fp16")


def cpu_isa() -> str:
    """The kernel-relevant instruction sets of this CPU, e.g. 'avx2 avx512f avx512_vnni'."""
    from angiogate.engines.cpu import cpu_flags

    flags = cpu_flags()
    if not flags:
        import platform

        return platform.machine()
    return " ".join(flag for flag in _KERNEL_ISA if flag in flags)


def compile_ir(xml: Path, precision: str, *, threads: int = 0, performance_hint: str = "latency",
               cache_dir: Path | None = None):
    """An IR compiled for the CPU in `precision`; raises if the CPU cannot honour it.

    With `cache_dir` (a folder for this IR's exact bytes: see `cache_folder`)
    OpenVINO keeps the compiled blob there and a later process loads it
    instead of compiling again (0.36 -> 0.10-0.18 s for the bundled X3D-S).
    """
    if precision not in INFERENCE_PRECISION:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(INFERENCE_PRECISION)}")
    if performance_hint not in PERFORMANCE_HINTS:
        raise ValueError(f"unknown performance hint {performance_hint!r}; expected latency or throughput")
    properties = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
                  "PERFORMANCE_HINT": PERFORMANCE_HINTS[performance_hint]}
    if threads > 0:
        properties["INFERENCE_NUM_THREADS"] = int(threads)
    core = _core()
    if cache_dir is not None and _writable(cache_dir):
        properties["CACHE_DIR"] = str(cache_dir)
        compiled = core.compile_model(str(xml), "CPU", properties)
    else:
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", properties)
    actual = compiled.get_property("INFERENCE_PRECISION_HINT")
    actual = actual.get_type_name() if hasattr(actual, "get_type_name") else str(actual)
    wanted = INFERENCE_PRECISION[precision]
    # Without bf16 units the CPU plugin quietly computes in f32: say so rather than mislabel verdicts.
    if actual != wanted:
        raise RuntimeError(f"OpenVINO compiled {xml.name} for {actual}, not {wanted}: "
                           f"this CPU ({cpu_name()}) cannot run {precision}")
    return compiled


def cache_folder(export_dir: Path | None, ir_sha256: dict | None) -> Path | None:
    """Where compiled blobs of one IR go: `<export_dir>/compiled/<its xml+bin sha256>`.

    Keyed by the IR's verified bytes, not its name, so a re-made export under
    the same file name never loads another export's blob. None (no cache)
    without a folder or the IR's digests.
    """
    if export_dir is None or not ir_sha256 or not ir_sha256.get("xml") or not ir_sha256.get("bin"):
        return None
    return Path(export_dir) / "compiled" / f"{ir_sha256['xml'][:16]}-{ir_sha256['bin'][:16]}"


def _writable(folder: Path) -> bool:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


class OpenVINOEngine:
    """An exported IR of one checkpoint, compiled for the CPU in one precision."""

    def __init__(self, xml: Path, info: ModelInfo, *, precision: str, checkpoint_version: str,
                 threads: int = 0, performance_hint: str = "latency", cache_dir: Path | None = None):
        self.info = info
        self.precision = precision
        self.xml = Path(xml)
        self.compiled = compile_ir(self.xml, precision, threads=threads, performance_hint=performance_hint,
                                   cache_dir=cache_dir)
        self.name = f"openvino-cpu-{precision}"
        self.version = f"{checkpoint_version}/openvino-{openvino_version()}/{precision}"
        self._request = self.compiled.create_infer_request()
        self._output = self.compiled.output(0)
        self._lock = threading.Lock()  # one infer request: one batch at a time

    def predict(self, clips: np.ndarray) -> Prediction:
        batch = np.ascontiguousarray(clips, dtype=np.float32)
        with self._lock:
            logits = np.array(self._request.infer({0: batch})[self._output], copy=True)
        return split_logits(logits, len(self.info.reason_classes))
