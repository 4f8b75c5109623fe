"""Which engine serves a checkpoint, and opening it.

  torch     the checkpoint's network in PyTorch fp32, on CUDA or the CPU
            (`torch_engine.py`);
  openvino  the same network exported to OpenVINO IR (`exports.py`) on the
            CPU, in fp32, bf16 or int8 (`openvino_engine.py`).

`choose_engine` decides which one serves (pure: it is given the facts),
`open_engine` gathers the facts for a checkpoint and opens the choice.
`openvino_engine` (which imports the openvino package) is imported only when
OpenVINO may serve, so a machine without the package never loads it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from angiogate.engines import exports
from angiogate.engines.base import ENGINES, PRECISIONS, PREFERENCE, EngineError, InferenceEngine, checkpoint_version
from angiogate.engines.cpu import cpu_flags, native_bf16

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    engine: str      # torch | openvino
    precision: str   # fp32 | bf16 | int8
    device: str      # torch: auto | cpu | cuda; openvino: cpu
    reason: str      # why, for the log


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


# Device nodes of an NVIDIA or AMD (ROCm) GPU driver: without one, torch cannot see a GPU either.
_GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd")


def cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch (about 3 s) on a machine with no GPU driver."""
    if not any(Path(node).exists() for node in _GPU_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def _torch_engine(checkpoint: Path, device: str, threads: int) -> InferenceEngine:
    from angiogate.engines.torch_engine import TorchEngine  # imports torch: only when torch serves

    return TorchEngine(checkpoint, device=device, threads=threads)


def precision_preference(flags=None) -> tuple[str, ...]:
    """The order in which `auto` tries precisions on this CPU (or one with `flags`): fastest first.

    int8, bf16, fp32; but bf16 before int8 where the CPU computes bf16 natively
    and int8 without AMX: on an AVX-512 bf16 + VNNI EPYC (no AMX) the bundled
    X3D-S took 0.66x fp32's time in bf16 and 0.80x in int8, batch 1, 2 threads
    (docs/model_comparison.md, "int8 with fp32 adds")."""
    flags = cpu_flags() if flags is None else flags
    if native_bf16(flags) and "amx_int8" not in flags:
        return ("bf16", "int8", "fp32")
    return PREFERENCE


def choose_engine(*, engine: str, precision: str, device: str, cuda_available: bool,
                  openvino_available: bool, cpu_precisions: frozenset[str] | set[str],
                  checked: frozenset[str] | set[str], preference: tuple[str, ...] = PREFERENCE) -> EngineChoice:
    """Which engine and precision serve, and why. Raises EngineError when the
    configuration asks for something this machine or checkpoint cannot give.

    `cpu_precisions`: what OpenVINO's CPU plugin can compute in here (fp32
    always; bf16 and int8 by instruction set). `checked`: precisions with an
    installed export of this checkpoint whose agreement check passed (fp32
    needs none: it is exported on demand and matches torch numerically).
    engine auto: torch on CUDA when a GPU is present (unless device is cpu),
    else OpenVINO when installed, else torch on the CPU. precision auto: the
    first of `preference` (`precision_preference`: fastest first) that is
    checked and that the CPU runs.
    """
    if engine not in ("auto", *ENGINES):
        raise EngineError(f"model.engine {engine!r}: expected auto, torch or openvino")
    if engine == "torch" or (engine == "auto" and device == "cuda"):
        _torch_precision(precision)
        return EngineChoice("torch", "fp32", device, f"model.engine {engine}, model.device {device}")
    if engine == "auto" and device == "auto" and cuda_available:
        _torch_precision(precision)
        return EngineChoice("torch", "fp32", "cuda", "a CUDA GPU is present")
    if not openvino_available:
        if engine == "openvino":
            raise EngineError("model.engine openvino: the openvino package is not installed "
                              "(pip install openvino), or set model.engine to auto or torch")
        _torch_precision(precision)
        return EngineChoice("torch", "fp32", "cpu", "no CUDA GPU and the openvino package is not installed")
    where = "model.engine openvino" if engine == "openvino" else "no CUDA GPU, OpenVINO installed"
    if precision == "auto":
        for candidate in preference:
            if candidate == "fp32":
                return EngineChoice("openvino", "fp32", "cpu",
                                    f"{where}; no faster precision has a passed agreement check "
                                    f"for this checkpoint on this CPU, so fp32 (numerically torch's)")
            if candidate in checked and candidate in cpu_precisions:
                return EngineChoice("openvino", candidate, "cpu",
                                    f"{where}; {candidate} is the fastest precision whose agreement "
                                    f"check passed for this checkpoint")
    if precision not in PRECISIONS:
        raise EngineError(f"model.precision {precision!r}: expected auto, fp32, bf16 or int8")
    if precision not in cpu_precisions:
        raise EngineError(f"model.precision {precision}: this CPU has no {precision} support in OpenVINO "
                          f"(it offers {', '.join(sorted(cpu_precisions))}); set model.precision to auto")
    if precision != "fp32" and precision not in checked:
        raise EngineError(f"model.precision {precision}: no {precision} export of this checkpoint has "
                          f"passed its agreement check on this OpenVINO release; run `angiogate export "
                          f"CHECKPOINT --precision {precision} --evaluation DIR`"
                          + (" --calibration DIR" if precision == "int8" else "")
                          + " or set model.precision to auto")
    return EngineChoice("openvino", precision, "cpu", f"{where}; model.precision {precision}")


def _torch_precision(precision: str) -> None:
    if precision not in ("auto", "fp32"):
        raise EngineError(f"model.precision {precision}: the torch engine runs fp32 only; "
                          f"bf16 and int8 need the OpenVINO engine")


def open_engine(checkpoint: Path, *, engine: str = "auto", precision: str = "auto", device: str = "auto",
                threads: int = 0, performance_hint: str = "latency", export_dir: Path | None = None,
                convert_missing: bool = True) -> InferenceEngine:
    """The engine `choose_engine` picks for `checkpoint`, opened.

    For OpenVINO it uses the installed export of this exact checkpoint
    (beside it, or in `export_dir`). A missing fp32 export is made now,
    except under engine auto with `convert_missing` False: then torch serves
    until one is made (the gate makes it in the background). If OpenVINO
    fails under engine auto, torch serves too; the log says why.
    """
    checkpoint = Path(checkpoint)
    facts = {"cuda_available": device != "cpu" and cuda_available(), "openvino_available": openvino_available(),
             "cpu_precisions": frozenset({"fp32"}), "checked": frozenset()}
    found_exports = {}
    if facts["openvino_available"] and engine != "torch" and not (engine == "auto" and device == "cuda"):
        from angiogate.engines.openvino_engine import cpu_precisions  # imports openvino: only when it may serve

        facts["cpu_precisions"] = cpu_precisions()
        facts["preference"] = precision_preference()
        found_exports = exports.find_exports(checkpoint, export_dir)
        facts["checked"] = frozenset(p for p, found in found_exports.items() if found.passed)
        for p, found in found_exports.items():
            if not found.passed:
                log.info("%s export of %s not used: %s", p, checkpoint.name, found.problem)
    choice = choose_engine(engine=engine, precision=precision, device=device, **facts)
    if choice.engine == "openvino" and (notes := _refused(found_exports, facts["cpu_precisions"])):
        choice = EngineChoice(choice.engine, choice.precision, choice.device, f"{choice.reason}; {notes}")
    log.info("inference engine for %s: %s %s (%s)", checkpoint.name, choice.engine, choice.precision, choice.reason)
    opened = _open_choice(checkpoint, choice, found_exports, engine=engine, precision=precision, threads=threads,
                          performance_hint=performance_hint, export_dir=export_dir, convert_missing=convert_missing)
    if getattr(opened, "serving_reason", None) is None:
        opened.serving_reason = choice.reason  # for `bench` and `score`: which precision serves and why
    return opened


def _refused(found_exports: dict, cpu_precisions) -> str:
    """Why faster exports this CPU could run are not served, for the log."""
    notes = []
    for precision, found in found_exports.items():
        if found.passed or precision not in cpu_precisions:
            continue
        if found.measured_elsewhere:
            notes.append(f"the {precision} export's agreement was measured on another CPU or OpenVINO release: "
                         f"not trusted until re-checked on this one")
        elif found.here:
            notes.append(f"the {precision} export failed its agreement re-check on this CPU")
    return "; ".join(notes)


def _open_choice(checkpoint: Path, choice: EngineChoice, found_exports: dict, *, engine: str, precision: str,
                 threads: int, performance_hint: str, export_dir: Path | None,
                 convert_missing: bool) -> InferenceEngine:
    if choice.engine == "torch":
        return _torch_engine(checkpoint, choice.device, threads)
    from angiogate.engines.openvino_engine import OpenVINOEngine, cache_folder

    try:
        found = found_exports.get(choice.precision)
        if found is None or not found.passed:  # only fp32 gets here: made on demand
            if engine == "auto" and not convert_missing:
                log.info("no OpenVINO export of %s yet: torch on the CPU serves until one is made "
                         "(`angiogate export`)", checkpoint.name)
                fallback = _torch_engine(checkpoint, "cpu", threads)
                fallback.serving_reason = f"{choice.reason}; no OpenVINO export yet, so torch until one is made"
                return fallback
            found = exports.ensure_fp32(checkpoint, export_dir)
        return OpenVINOEngine(found.xml, found.info, precision=choice.precision,
                              checkpoint_version=checkpoint_version(found.info, found.digest),
                              threads=threads, performance_hint=performance_hint,
                              cache_dir=cache_folder(export_dir, found.sidecar.get("ir_sha256")))
    except Exception as exc:
        if engine == "openvino" or precision != "auto":
            raise
        log.warning("OpenVINO %s for %s failed (%s: %s); serving with torch on the CPU instead",
                    choice.precision, checkpoint.name, type(exc).__name__, exc)
        fallback = _torch_engine(checkpoint, "cpu", threads)
        fallback.serving_reason = f"OpenVINO {choice.precision} failed ({type(exc).__name__}), so torch on the CPU"
        return fallback
