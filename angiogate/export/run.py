"""`angiogate export`: export a checkpoint in one precision, check it judges as torch does, install it.

fp32 needs no data (without evaluation clips only its self-check runs);
bf16 needs evaluation clips for the agreement check; int8 calibration clips
too. A bf16 or int8 export that fails its check is never served on this CPU
and OpenVINO release; its IR stays, with a sidecar that says it failed here,
because another CPU re-checks it (a check holds for its instruction sets
only). An fp32 export that fails is withdrawn, its figures kept in
`<key>.rejected.json`. `report` is the table for a person.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from angiogate.config import Config
from angiogate.engines.base import PRECISIONS, checkpoint_version
from angiogate.engines.exports import (SIDECAR_FORMAT, ExportError, find_exports, install_ir, ir_stem, make_fp32,
                                       open_export, place, remove_ir, save_ir, sidecar_for, sidecar_name,
                                       target_folder, versions, write_json)
from angiogate.engines.openvino_engine import cpu_name, cpu_precisions
from angiogate.engines.torch_engine import TorchEngine
from angiogate.export.agreement import Agreement, check_agreement, score_both
from angiogate.export.clips import LabelledClip, sample
from angiogate.export.int8 import fp32_operations, quantize_int8

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    checkpoint: Path
    precision: str
    installed: bool
    xml: Path | None
    sidecar_path: Path
    sidecar: dict
    agreement: Agreement | None
    version: str


def run_export(checkpoint: Path, precision: str, config: Config, *,
               calibration: Sequence[LabelledClip] = (), evaluation: Sequence[LabelledClip] = (),
               calibration_limit: int = 300, seed: int = 0, threads: int = 0, notes: dict | None = None,
               max_mean_difference: float | None = None,
               progress: Callable[[str, int, int], None] | None = None) -> ExportResult:
    """Export `checkpoint` in `precision`, check it against torch fp32, install it if it agrees.

    fp32 needs no data (without `evaluation` only the self-check runs); bf16
    needs `evaluation`; int8 needs `calibration` too, and with
    `max_mean_difference` uses NNCF's accuracy control (`quantize_int8`).
    `notes` (e.g. where the clips came from) go into the sidecar. Raises ExportError when it cannot
    even try. `progress(stage, done, total)` is told how far.
    """
    checkpoint = Path(checkpoint)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and not evaluation:
        raise ExportError(f"a {precision} export needs evaluation clips (labelled folders) for its agreement check")
    if precision == "int8" and not calibration:
        raise ExportError("an int8 export needs calibration clips (labelled folders)")
    if precision not in cpu_precisions():
        raise ExportError(f"this CPU ({cpu_name()}) cannot run {precision} in OpenVINO: its agreement must be "
                          f"checked on the CPU that serves it")
    folder = target_folder(checkpoint, config.model.export_folder)
    if folder is None:
        raise ExportError(f"cannot write beside {checkpoint} nor in model.export_dir {config.model.export_folder}")
    torch_engine = TorchEngine(checkpoint, device="cpu", threads=threads)
    digest = torch_engine.digest
    tell = progress or (lambda stage, done, total: None)

    fp32 = find_exports(checkpoint, config.model.export_folder, digest).get("fp32")
    if fp32 is None or not fp32.passed:
        tell("converting to OpenVINO", 0, 1)
        fp32 = make_fp32(torch_engine, folder, threads)
    if precision != "int8":
        fp32 = place(fp32, folder)  # a bf16 sidecar names the fp32 IR beside it
    stem = ir_stem(digest, precision)
    extra: dict = dict(notes or {})
    candidate, fresh = fp32.xml, False  # fp32 and bf16 run the fp32 IR
    if precision == "int8":
        import nncf
        import openvino as ov

        chosen = sample(calibration, calibration_limit, seed)
        tell(f"calibrating int8 on {len(chosen)} clips", 0, len(chosen))
        quantized = quantize_int8(ov.Core().read_model(str(fp32.xml)), chosen, torch_engine.info, config,
                                  reference=lambda batch: torch_engine.predict(batch).unsatisfactory_probability,
                                  max_mean_difference=max_mean_difference)
        candidate, fresh = save_ir(quantized, folder, stem), True
        extra["nncf"] = nncf.__version__
        extra["calibration_clips"] = {"used": len(chosen), "of": len(calibration), "seed": seed}
        extra["int8_preset"] = config.model.int8_preset
        extra["int8_bias_correction"] = config.model.int8_bias_correction
        extra["int8_fp32_types"] = list(config.model.int8_fp32_types)
        if max_mean_difference is not None:
            extra["accuracy_control"] = {"max_mean_difference": max_mean_difference,
                                         "validated_on": "the last half of the calibration clips"}
        left, weighted = fp32_operations(quantized)
        extra["fp32_operations"] = {"left": left, "of": weighted}
    agreement = None
    try:
        export_engine = open_export(candidate, torch_engine, precision, threads)
        if evaluation:
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                tell("agreement check", done[0], len(evaluation))

            tell("agreement check", 0, len(evaluation))
            targets, torch_scores, export_scores, skipped = score_both(torch_engine, export_engine, evaluation,
                                                                       config, progress=advance)
            threshold = config.model.threshold if config.model.threshold is not None else torch_engine.info.threshold
            agreement = check_agreement(targets, torch_scores, export_scores, threshold,
                                        max_auc_difference=config.model.agreement_max_auc_difference,
                                        min_identical_decisions=config.model.agreement_min_identical_decisions)
            extra["evaluation_clips"] = {"scored": agreement.clips, "of": len(evaluation), "skipped": skipped}
            extra["agreement"] = asdict(agreement) | {"passed": agreement.passed}
        passed = agreement is None or agreement.passed
        if fresh and (passed or precision != "fp32"):  # a failed int8 IR is kept for other CPUs' re-checks
            candidate, fresh = install_ir(candidate, folder, stem), False
    finally:
        if fresh:
            remove_ir(candidate)
    accepted = candidate.parent / sidecar_name(digest, precision)
    rejected = folder / sidecar_name(digest, precision).replace(".json", ".rejected.json")
    if not passed and precision != "fp32":
        # Kept, never served here: a check holds for its CPU and OpenVINO release only, so another
        # CPU re-checks this IR (angiogate.export.recheck) and may serve it (engines/exports.py).
        sidecar = sidecar_for(torch_engine, precision, candidate, passed=False, **extra)
        write_json(accepted, sidecar)
        rejected.unlink(missing_ok=True)
        log.warning("%s export of %s failed its check on this CPU: %s; kept (never served here) for "
                    "re-checks on other CPUs", precision, checkpoint_version(torch_engine.info, digest),
                    "; ".join(agreement.failures))
        return ExportResult(checkpoint, precision, False, candidate, accepted, sidecar, agreement,
                            f"{checkpoint_version(torch_engine.info, digest)}/openvino-{versions()['openvino']}"
                            f"/{precision}")
    if not passed:  # fp32: the converter itself is in doubt: withdraw the fp32 export too
        accepted.unlink(missing_ok=True)
        remove_ir(candidate)
        write_json(rejected, {"format": SIDECAR_FORMAT, "precision": precision, "passed": False,
                               "checkpoint_sha256": digest,
                               "checkpoint_version": checkpoint_version(torch_engine.info, digest),
                               **versions(), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               **extra})
        log.warning("%s export of %s rejected: %s", precision, checkpoint_version(torch_engine.info, digest),
                    "; ".join(agreement.failures))
        return ExportResult(checkpoint, precision, False, None, rejected, extra, agreement,
                            f"{checkpoint_version(torch_engine.info, digest)}/openvino-{versions()['openvino']}"
                            f"/{precision}")
    sidecar = sidecar_for(torch_engine, precision, candidate, passed=True, **extra)
    if precision == "fp32":
        sidecar["self_check"] = fp32.sidecar.get("self_check")
    write_json(accepted, sidecar)
    rejected.unlink(missing_ok=True)
    return ExportResult(checkpoint, precision, True, candidate, accepted, sidecar, agreement, export_engine.version)


def report(result: ExportResult) -> str:
    """The agreement table and the outcome, for a person."""
    sidecar, agreement = result.sidecar, result.agreement
    lines = [f"OpenVINO {result.precision} export of {result.checkpoint} ({result.version})"]
    if agreement is None:
        check = sidecar.get("self_check") or {}
        lines.append("no evaluation clips: checked against torch on a synthetic batch only "
                     f"(max |P difference| {check.get('max_probability_difference', float('nan')):.2e})")
    else:
        a = agreement
        ok = lambda good: "ok" if good else "FAIL"  # noqa: E731
        lines += [f"{'':24s}{'torch fp32':>12s}{'export':>12s}{'limit':>12s}",
                  f"{'clips scored':24s}{a.clips:>12d}{'':>12s}{'':>12s}   ({a.unsatisfactory} unsatisfactory)",
                  f"{'AUC':24s}{a.auc_torch:>12.4f}{a.auc_export:>12.4f}",
                  f"{'|AUC difference|':24s}{'':>12s}{a.auc_difference:>12.4f}"
                  f"{'<= ' + format(a.max_auc_difference, '.4f'):>12s}"
                  f"   {ok(a.auc_difference <= a.max_auc_difference)}",
                  f"{'identical decisions':24s}{'':>12s}{a.identical_decisions:>12.2%}"
                  f"{'>= ' + format(a.min_identical_decisions, '.2%'):>12s}"
                  f"   {ok(a.identical_decisions >= a.min_identical_decisions)}"
                  f"  ({a.flipped} flipped at threshold {a.threshold:.4f})",
                  f"{'max |P difference|':24s}{'':>12s}{a.max_probability_difference:>12.4f}"]
    left, control = sidecar.get("fp32_operations"), sidecar.get("accuracy_control")
    if left:
        lines.append(f"{left['left']} of {left['of']} weighted operations kept in fp32"
                     + (f" (accuracy control: mean |P difference| <= {control['max_mean_difference']}"
                        " on calibration clips)" if control else "")
                     + (f"; inputs of {', '.join(sidecar['int8_fp32_types'])} left in fp32"
                        if sidecar.get("int8_fp32_types") else ""))
    if result.installed:
        lines.append(f"PASSED: installed {result.xml} (sidecar {result.sidecar_path.name})")
    else:
        lines.append(f"REJECTED, not installed: {'; '.join(agreement.failures)} (figures in {result.sidecar_path})"
                     if result.precision == "fp32" else
                     f"REJECTED on this CPU, never served here: {'; '.join(agreement.failures)}; the IR and its "
                     f"figures ({result.sidecar_path.name}) are kept so that a CPU with other instruction sets "
                     f"re-checks it")
    return "\n".join(lines)
