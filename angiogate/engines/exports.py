"""OpenVINO exports of a checkpoint, the serving half: find, convert, self-check, install.

Where: `<stem>.openvino/` beside the checkpoint when that folder is writable,
else `model.export_dir`; the engine looks in both. What: files keyed by the
checkpoint's sha256, so a changed checkpoint never meets an old export:

    default.pt
    default.openvino/
      3f2a9c0d1e4b-fp32.xml/.bin   the network as converted (serves fp32 and bf16)
      3f2a9c0d1e4b-int8.xml/.bin   NNCF post-training quantised (serves int8)
      3f2a9c0d1e4b-fp32.json       one sidecar per precision, written last: an
      3f2a9c0d1e4b-bf16.json       export is installed only with its sidecar, whose
      3f2a9c0d1e4b-int8.json       check passed and whose digests match the files

`find_exports` returns only exports whose sidecar passed, whose files match
it (hashed through `digests.DigestCache`: a start re-reads only files whose
stamp changed), and (bf16, int8) whose figures were measured with this OpenVINO release
(major.minor) and on CPUs with these instruction sets (AVX2, AVX-512, VNNI,
AMX: they pick the kernels). A bf16 or int8 export whose check failed keeps
its IR and a sidecar that says so (`passed: false`): where it was checked it
is never served, and elsewhere it is re-checked like one that passed there,
since a check, passed or failed, holds for its CPU and release only (an int8
export can flip decisions on an AVX2-only CPU and agree on one with VNNI).
An export checked elsewhere is re-checked where it runs (`angiogate.export.recheck`, started by `angiogate.modelstore.recheck`);
that check's record, passed or failed, is named for this CPU and release and
sits beside the IR it checked, in the folder new exports go to:

      3f2a9c0d1e4b-int8.avx2.ov2026.4.json   int8 re-checked on an AVX2-only CPU

`recheck_wanted` names the precisions that have no such record yet. fp32 needs no data and is made on demand
(`ensure_fp32`); it is checked against torch on a seeded synthetic batch
(`self_check`) before it is installed. `copy_exports` carries them with a
promoted checkpoint. bf16 and int8 exports, with their agreement check on
labelled clips, are made offline by `angiogate.export` (`angiogate export`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from angiogate.engines.base import PRECISIONS, checkpoint_version
from angiogate.engines.digests import DigestCache
from angiogate.engines.info import REASON_CLASSES, ModelInfo, file_digest

if TYPE_CHECKING:  # torch is imported only where an export is made: serving one needs none
    from angiogate.engines.torch_engine import TorchEngine

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "angiogate-openvino-export/1"
SELF_CHECK_TOLERANCE = 1e-4  # fp32 vs torch on the synthetic batch, in probability


class ExportError(RuntimeError):
    """The export cannot be made (missing data, unsupported CPU); the message says why."""


# ------------------------------------------------------------------ where

def beside(checkpoint: Path) -> Path:
    """`models/default.pt` -> `models/default.openvino/`."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / f"{checkpoint.stem}.openvino"


def search_folders(checkpoint: Path, export_dir: Path | None) -> list[Path]:
    folders = [beside(checkpoint)]
    if export_dir is not None and Path(export_dir) not in folders:
        folders.append(Path(export_dir))
    return folders


def target_folder(checkpoint: Path, export_dir: Path | None) -> Path | None:
    """Where new exports go: beside the checkpoint if writable, else `export_dir`, else None."""
    for folder in search_folders(checkpoint, export_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    return None


def record_folder(checkpoint: Path, export_dir: Path | None) -> Path | None:
    """Where this machine's own agreement records (and their re-check locks) go.

    `export_dir` first: a record says what this CPU measured, so it belongs to
    the site's writable state, not beside a checkpoint that ships with the
    package (or sits on a shared volume) and must hold only what was shipped.
    Beside the checkpoint only when `export_dir` cannot be written.
    """
    if export_dir is not None:
        try:
            Path(export_dir).mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
        else:
            if os.access(export_dir, os.W_OK | os.X_OK):
                return Path(export_dir)
    return target_folder(checkpoint, export_dir)


def ir_stem(digest: str, precision: str) -> str:
    """bf16 runs the fp32 IR (the precision is chosen when it is compiled)."""
    return f"{digest[:12]}-{'int8' if precision == 'int8' else 'fp32'}"


def sidecar_name(digest: str, precision: str) -> str:
    return f"{digest[:12]}-{precision}.json"


def sha256(path: Path) -> str:
    return file_digest(path)


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------ finding

@dataclass
class FoundExport:
    """An export of one checkpoint in one precision, as found on disk."""

    precision: str
    digest: str
    xml: Path | None = None
    info: ModelInfo | None = None
    sidecar: dict = field(default_factory=dict)
    passed: bool = False
    problem: str | None = None
    measured_elsewhere: bool = False  # only its CPU or OpenVINO release disqualifies it (xml is set): re-check
    here: bool = False                # this CPU's own record (a re-check), not the export's sidecar


def _info_from_sidecar(raw: dict) -> ModelInfo:
    raw = dict(raw)
    raw["reason_classes"] = tuple(raw.get("reason_classes", REASON_CLASSES))
    return ModelInfo(**raw)


def here_record_name(digest: str, precision: str) -> str:
    """This CPU's own agreement record of an export: `<key>-int8.avx2+avx512f.ov2026.4.json`."""
    from angiogate.engines.openvino_engine import cpu_isa, openvino_release

    return f"{digest[:12]}-{precision}.{cpu_isa().replace(' ', '+') or 'none'}.ov{openvino_release()}.json"


def _examine(folder: Path, digest: str, precision: str, name: str, digests: DigestCache) -> FoundExport | None:
    from angiogate.engines.openvino_engine import cpu_isa, openvino_release

    path = folder / name
    if not path.exists():
        return None
    found = FoundExport(precision, digest, here=name != sidecar_name(digest, precision))
    try:
        sidecar = json.loads(path.read_text())
        found.sidecar = sidecar
        xml = folder / sidecar["ir"]
        if sidecar.get("format") != SIDECAR_FORMAT:
            found.problem = f"{path}: not an {SIDECAR_FORMAT} sidecar"
        elif sidecar.get("checkpoint_sha256") != digest or sidecar.get("precision") != precision:
            found.problem = f"{path}: made from another checkpoint (sha256 {sidecar.get('checkpoint_sha256')})"
        elif not sidecar.get("passed") and (precision == "fp32" or "ir_sha256" not in sidecar
                                             or _checked_here(sidecar)):
            failures = "; ".join((sidecar.get("agreement") or {}).get("failures") or [sidecar.get("error", "")])
            found.problem = f"{path}: its check did not pass" + (f" ({failures})" if failures else "")
        elif not xml.exists() or not xml.with_suffix(".bin").exists():
            found.problem = f"{path}: IR {xml.name} or its .bin is missing"
        elif (digests.digest(xml) != sidecar["ir_sha256"]["xml"]
              or digests.digest(xml.with_suffix(".bin")) != sidecar["ir_sha256"]["bin"]):
            found.problem = f"{path}: IR files {xml.name}/.bin do not match the sha256 the sidecar records"
        elif not sidecar.get("passed"):  # failed where it was made: says nothing about this CPU either way
            found.problem = (f"{path}: its check failed on a CPU with [{sidecar.get('cpu_isa')}] and OpenVINO "
                             f"{sidecar.get('openvino')}; not served until re-checked here")
            found.xml, found.measured_elsewhere = xml, True
        elif precision != "fp32" and sidecar.get("openvino_release") != openvino_release():
            found.problem = (f"{path}: agreement measured with OpenVINO {sidecar.get('openvino')}, "
                             f"this is {openvino_release()}; not trusted until re-checked here")
            found.xml, found.measured_elsewhere = xml, True
        elif precision != "fp32" and sidecar.get("cpu_isa") != cpu_isa():
            found.problem = (f"{path}: agreement measured on a CPU with [{sidecar.get('cpu_isa')}], "
                             f"this one has [{cpu_isa()}]; not trusted until re-checked here")
            found.xml, found.measured_elsewhere = xml, True
        else:
            found.xml, found.info, found.passed = xml, _info_from_sidecar(sidecar["info"]), True
    except (OSError, ValueError, KeyError, TypeError) as exc:
        found.problem = f"{path}: unreadable sidecar ({type(exc).__name__}: {exc})"
    return found


def _checked_here(sidecar: dict) -> bool:
    """Whether a sidecar's figures were measured on this CPU's instruction sets and OpenVINO release."""
    from angiogate.engines.openvino_engine import cpu_isa, openvino_release

    return sidecar.get("cpu_isa") == cpu_isa() and sidecar.get("openvino_release") == openvino_release()


def find_exports(checkpoint: Path, export_dir: Path | None, digest: str | None = None,
                 digests: DigestCache | None = None) -> dict[str, FoundExport]:
    """Exports of exactly this checkpoint's bytes, by precision.

    The first usable one per precision wins (beside the checkpoint before
    `export_dir`); a precision with only unusable ones maps to one whose
    `problem` says why. Precisions with none are absent. Files are hashed
    through `digests` (default: the cache in `export_dir`), so unchanged
    ones are not read again.
    """
    digests = digests or DigestCache(export_dir)
    digest = digest or digests.digest(checkpoint)
    result: dict[str, FoundExport] = {}
    folders = search_folders(checkpoint, export_dir)
    for precision in PRECISIONS:
        names = [sidecar_name(digest, precision)]
        if precision != "fp32":  # this CPU's own record first: it outranks figures measured elsewhere
            names.insert(0, here_record_name(digest, precision))
        candidates = [found for name in names for folder in folders
                      if (found := _examine(folder, digest, precision, name, digests)) is not None]
        chosen = next((f for f in candidates if f.passed), None) or next(iter(candidates), None)
        if chosen is not None:
            result[precision] = chosen
    return result


def recheck_wanted(found: dict[str, FoundExport], cpu_precisions) -> list[str]:
    """Precisions whose export is refused only for where it was checked, that this CPU can run,
    and that have no record of a re-check on this CPU and OpenVINO release yet (passed or not)."""
    return [precision for precision, export in found.items()
            if export.measured_elsewhere and not export.passed and precision in cpu_precisions]


# ------------------------------------------------------------------ making

def convert(network, info: ModelInfo):
    """The torch network as an OpenVINO model with a dynamic batch dimension."""
    import torch
    from openvino.tools.ovc import convert_model  # not ov.convert_model: serving imports openvino without it

    shape = (1, 3, info.num_frames, info.crop_size, info.crop_size)
    with warnings.catch_warnings():  # torch.jit.trace's deprecation and tracer notes: not the operator's news
        warnings.simplefilter("ignore")
        # Traced here rather than by convert_model to skip torch's trace re-check (half the time):
        # the self-check compares the converted model with torch on a batch of another size instead.
        traced = torch.jit.trace(network.eval(), torch.zeros(shape), check_trace=False, strict=False)
        return convert_model(traced, input=[(-1, *shape[1:])])


def save_ir(model, folder: Path, stem: str) -> Path:
    """Write the IR under a temporary name in `folder`; `install_ir` renames it into place."""
    import openvino as ov

    tmp = folder / f".{stem}.{os.getpid()}.{int(time.time() * 1000)}.xml"
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # fp16 weights would change the numbers
    return tmp


def install_ir(tmp_xml: Path, folder: Path, stem: str) -> Path:
    xml = folder / f"{stem}.xml"
    os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp_xml, xml)
    return xml


def remove_ir(xml: Path) -> None:
    for path in (xml, xml.with_suffix(".bin")):
        path.unlink(missing_ok=True)


def versions() -> dict:
    import openvino  # noqa: F401
    import torch

    from angiogate.engines.openvino_engine import cpu_isa, cpu_name, openvino_release, openvino_version

    return {"openvino": openvino_version(), "openvino_release": openvino_release(), "torch": torch.__version__,
            "cpu": cpu_name(), "cpu_isa": cpu_isa()}


def sidecar_for(torch_engine: TorchEngine, precision: str, xml: Path, **extra) -> dict:
    return {"format": SIDECAR_FORMAT, "precision": precision, "ir": xml.name,
            "ir_sha256": {"xml": sha256(xml), "bin": sha256(xml.with_suffix(".bin"))},
            "checkpoint_sha256": torch_engine.digest,
            "checkpoint_version": checkpoint_version(torch_engine.info, torch_engine.digest),
            "info": asdict(torch_engine.info), **versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}


def self_check(torch_engine: TorchEngine, export_engine, clips: int = 2, seed: int = 0) -> float:
    """Largest |P(unsatisfactory)| difference between the two on a seeded synthetic batch."""
    info = torch_engine.info
    batch = np.random.default_rng(seed).standard_normal(
        (clips, 3, info.num_frames, info.crop_size, info.crop_size)).astype(np.float32)
    ours = export_engine.predict(batch)
    theirs = torch_engine.predict(batch)
    return float(max(np.abs(ours.unsatisfactory_probability - theirs.unsatisfactory_probability).max(),
                     np.abs(ours.reason_probabilities - theirs.reason_probabilities).max(initial=0.0)))


def open_export(xml: Path, torch_engine: TorchEngine, precision: str, threads: int = 0):
    from angiogate.engines.openvino_engine import OpenVINOEngine

    return OpenVINOEngine(xml, torch_engine.info, precision=precision,
                          checkpoint_version=checkpoint_version(torch_engine.info, torch_engine.digest),
                          threads=threads)


def make_fp32(torch_engine: TorchEngine, folder: Path, threads: int = 0) -> FoundExport:
    """Convert, self-check and install the fp32 IR and its sidecar in `folder`."""
    digest = torch_engine.digest
    stem = ir_stem(digest, "fp32")
    started = time.perf_counter()
    tmp = save_ir(convert(torch_engine.network, torch_engine.info), folder, stem)
    try:
        difference = self_check(torch_engine, open_export(tmp, torch_engine, "fp32", threads))
        if difference > SELF_CHECK_TOLERANCE:
            raise ExportError(f"the fp32 export of {checkpoint_version(torch_engine.info, digest)} differs from "
                              f"torch by {difference:.2e} "
                              f"in probability (allowed {SELF_CHECK_TOLERANCE:.0e}): not installed")
        xml = install_ir(tmp, folder, stem)
    except BaseException:
        remove_ir(tmp)
        raise
    sidecar = sidecar_for(torch_engine, "fp32", xml, passed=True,
                       self_check={"max_probability_difference": difference, "tolerance": SELF_CHECK_TOLERANCE},
                       seconds=round(time.perf_counter() - started, 1))
    write_json(folder / sidecar_name(digest, "fp32"), sidecar)
    log.info("exported %s to OpenVINO fp32 in %s (self-check: max |dP| %.1e)",
             checkpoint_version(torch_engine.info, digest), xml, difference)
    return FoundExport("fp32", digest, xml, torch_engine.info, sidecar, True)


def ensure_fp32(checkpoint: Path, export_dir: Path | None, *, threads: int = 0) -> FoundExport:
    """The installed fp32 export of `checkpoint`, made now if there is none.

    When neither the checkpoint's folder nor `export_dir` is writable the IR
    goes to a temporary folder and is made again at the next start.
    """
    checkpoint = Path(checkpoint)
    found = find_exports(checkpoint, export_dir).get("fp32")
    if found is not None and found.passed:
        return found
    folder = target_folder(checkpoint, export_dir)
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="angiogate-openvino-"))
        log.warning("neither %s nor model.export_dir %s is writable: the OpenVINO export of %s goes to %s "
                    "and is made again at the next start", beside(checkpoint), export_dir, checkpoint, folder)
    log.info("exporting %s to OpenVINO fp32 (once per checkpoint) into %s", checkpoint, folder)
    from angiogate.engines.torch_engine import TorchEngine

    return make_fp32(TorchEngine(checkpoint, device="cpu", threads=threads), folder, threads)


def place(export: FoundExport, folder: Path) -> FoundExport:
    """`export` installed in `folder` too (IR files, then the sidecar); the same files, the same key."""
    if export.xml.parent == folder:
        return export
    stem = export.xml.stem
    for suffix in (".bin", ".xml"):
        target = folder / f"{stem}{suffix}"
        if not target.exists() or sha256(target) != export.sidecar["ir_sha256"][suffix[1:]]:
            tmp = folder / f".{stem}{suffix}.{os.getpid()}.tmp"
            shutil.copyfile(export.xml.with_suffix(suffix), tmp)
            os.replace(tmp, target)
    write_json(folder / sidecar_name(export.digest, export.precision), export.sidecar)
    return FoundExport(export.precision, export.digest, folder / f"{stem}.xml", export.info, export.sidecar, True)


def copy_exports(source: Path, destination: Path, export_dir: Path | None) -> list[str]:
    """Install beside `destination` the usable exports of `source` (same bytes, so same key).

    For promotion: the checkpoint goes into service with what was exported
    and checked for it. Returns the precisions copied.
    """
    folder = target_folder(destination, export_dir)
    if folder is None:
        return []
    found = find_exports(source, export_dir)
    return [precision for precision, export in found.items() if export.passed and place(export, folder)]
