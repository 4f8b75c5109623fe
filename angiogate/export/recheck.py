"""An export re-checked where it runs: `python -m angiogate.export.recheck CHECKPOINT PRECISION...`.

An int8 or bf16 export's agreement with torch fp32 holds for the CPU and
OpenVINO release it was measured on (the instruction sets pick the
kernels). A gate on another CPU starts this as a child process
(`angiogate.modelstore.recheck`): it renders deterministic phantoms of every
kind plus clips shaped like the real samples (512x512 8-bit, 30 fps, JPEG
Lossless), scores them with torch fp32 and with the export here, applies the
same bar as `angiogate export` (AUC within `model.agreement_max_auc_difference`,
at least `model.agreement_min_identical_decisions` identical decisions) and
writes the result, passed or failed, as this CPU's record of the export
(`angiogate.engines.exports.here_record_name`), next to a copy of the IR it
checked. A running gate's watcher sees the record and switches between two
clips, as it does for a promotion.

A child, not a thread: it needs the phantom renderer (`angiogate.synth`),
which serving never imports, and it runs at nice 19 with one thread, so the
gate's own judging keeps the CPU. The site's configuration arrives as JSON
on stdin (paths already resolved), so the child checks exactly what the gate
serves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("angiogate.export.recheck")

SEED = 1616                # the phantoms are the same on every machine and every run
REAL_KIND_FPS = 30.0       # the real samples: 30 fps, 512x512, 8-bit, JPEG Lossless / Baseline
LOCK_SUFFIX = ".running"


def make_inputs(folder: Path, per_kind: int, size: int) -> list:
    """Labelled clips the check scores: `per_kind` phantoms of every kind (both syntaxes, the
    archive mix of frame rates) plus `max(1, per_kind // 5)` of every kind shaped like the real
    samples (30 fps, JPEG Lossless). Deterministic: the same clips on every machine."""
    from angiogate.export.clips import clips_from_folders
    from angiogate.synth import generate

    generate(folder / "phantoms", per_kind=per_kind, seed=SEED, size=size)
    generate(folder / "real-kind", per_kind=max(1, per_kind // 5), seed=SEED + 1, size=size,
             frame_rates=(REAL_KIND_FPS,), syntaxes=("jpeg-lossless",))
    return clips_from_folders([folder / "phantoms", folder / "real-kind"])


def _lock(record: Path) -> bool:
    """Take the re-check of `record` (one at a time per record); False if a live process holds it."""
    lock = record.with_name(record.name + LOCK_SUFFIX)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
                os.kill(holder, 0)
                return False
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its holder is gone: take it
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def _ir_in(folder: Path, export) -> Path:
    """The export's IR in `folder`, copied there when it lives elsewhere (e.g. read-only in
    site-packages). Another IR of the same name already there is left alone: the copy then
    takes another name."""
    from angiogate.engines.exports import sha256

    if export.xml.parent == folder:
        return export.xml
    wanted = export.sidecar["ir_sha256"]
    stem = export.xml.stem
    if (folder / f"{stem}.xml").exists() and any(
            not (folder / f"{stem}.{part}").exists() or sha256(folder / f"{stem}.{part}") != wanted[part]
            for part in ("xml", "bin")):
        stem = f"{stem}-checked-here"
    for suffix in (".bin", ".xml"):
        target = folder / f"{stem}{suffix}"
        if target.exists() and sha256(target) == wanted[suffix[1:]]:
            continue
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        shutil.copyfile(export.xml.with_suffix(suffix), tmp)
        os.replace(tmp, target)
    return folder / f"{stem}.xml"


def recheck(checkpoint: Path, precisions: list[str], config, *, threads: int = 1) -> dict[str, dict]:
    """Re-run the agreement check of `precisions` on this CPU; write and return their records."""
    import torch

    from angiogate.engines import exports
    from angiogate.engines.openvino_engine import OpenVINOEngine, cpu_precisions
    from angiogate.engines.torch_engine import TorchEngine
    from angiogate.export.agreement import check_agreement, score_both

    torch.set_num_threads(threads)
    model = config.model
    folder = exports.record_folder(checkpoint, model.export_folder)
    if folder is None:
        raise exports.ExportError(f"cannot write beside {checkpoint} nor in model.export_dir {model.export_folder}")
    torch_engine = TorchEngine(checkpoint, device="cpu", threads=threads)
    digest = torch_engine.digest
    found = exports.find_exports(checkpoint, model.export_folder, digest)
    todo = [p for p in precisions if p in exports.recheck_wanted(found, cpu_precisions())]
    records: dict[str, dict] = {}
    held = [p for p in todo if _lock(folder / exports.here_record_name(digest, p))]
    if not held:
        return records
    threshold = model.threshold if model.threshold is not None else torch_engine.info.threshold
    with tempfile.TemporaryDirectory(prefix="angiogate-recheck-") as scratch:
        started = time.perf_counter()
        clips = make_inputs(Path(scratch), model.recheck_phantoms_per_kind, model.recheck_phantom_size)
        made_s = time.perf_counter() - started
        for precision in held:
            record_path = folder / exports.here_record_name(digest, precision)
            shipped = found[precision].sidecar
            extra = {"recheck": {"of": {k: shipped.get(k) for k in ("cpu", "cpu_isa", "openvino", "created_at")},
                                 "phantoms_per_kind": model.recheck_phantoms_per_kind,
                                 "phantom_size": model.recheck_phantom_size, "seed": SEED,
                                 "phantoms_s": round(made_s, 1)},
                     "evaluation": [f"angiogate.export.recheck phantoms (seed {SEED}, "
                                    f"{model.recheck_phantoms_per_kind} per kind, {model.recheck_phantom_size} px) "
                                    f"and real-kind clips (30 fps, JPEG Lossless)"]}
            try:
                checking = time.perf_counter()
                xml = _ir_in(folder, found[precision])
                engine = OpenVINOEngine(xml, torch_engine.info, precision=precision,
                                        checkpoint_version=torch_engine.version.split("/")[0], threads=threads)
                targets, torch_scores, export_scores, skipped = score_both(torch_engine, engine, clips, config)
                agreement = check_agreement(targets, torch_scores, export_scores, threshold,
                                            max_auc_difference=model.agreement_max_auc_difference,
                                            min_identical_decisions=model.agreement_min_identical_decisions)
                extra["recheck"]["check_s"] = round(time.perf_counter() - checking, 1)
                extra["evaluation_clips"] = {"scored": agreement.clips, "of": len(clips), "skipped": skipped}
                extra["agreement"] = asdict(agreement) | {"passed": agreement.passed}
                for key in ("calibration", "nncf", "calibration_clips", "int8_preset", "int8_bias_correction",
                            "int8_fp32_types", "fp32_operations"):
                    if key in shipped:
                        extra[key] = shipped[key]
                record = exports.sidecar_for(torch_engine, precision, xml, passed=agreement.passed, **extra)
            except Exception as exc:  # recorded as failed, so a restart does not run it again
                log.exception("re-check of the %s export of %s failed", precision, checkpoint)
                record = {"format": exports.SIDECAR_FORMAT, "precision": precision, "passed": False,
                          "checkpoint_sha256": digest, **exports.versions(),
                          "error": f"{type(exc).__name__}: {exc}", **extra}
            exports.write_json(record_path, record)
            record_path.with_name(record_path.name + LOCK_SUFFIX).unlink(missing_ok=True)
            records[precision] = record
            log.warning("%s export of %s re-checked on this CPU [%s]: %s", precision,
                        torch_engine.version.split("/")[0], record.get("cpu_isa"), _summary(record))
    return records


def _summary(record: dict) -> str:
    if "error" in record:
        return f"FAILED ({record['error']})"
    a = record["agreement"]
    return (f"{'PASSED' if record['passed'] else 'FAILED'}: {a['clips']} clips, AUC {a['auc_torch']:.4f} torch vs "
            f"{a['auc_export']:.4f}, {a['identical_decisions']:.2%} identical decisions"
            + ("" if record["passed"] else f" ({'; '.join(a['failures'])})"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m angiogate.export.recheck", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("precisions", nargs="+", choices=("int8", "bf16"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.nice(max(0, 19 - os.nice(0)))  # the gate judges first
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from angiogate.config import Config

    config = Config.model_validate(json.loads(sys.stdin.read()))
    records = recheck(args.checkpoint, args.precisions, config, threads=args.threads)
    return 0 if records and all(r.get("passed") for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
