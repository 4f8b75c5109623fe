"""Export a checkpoint to OpenVINO IR, check it judges as torch does, install it.

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

The agreement check scores labelled clips, prepared exactly as the judge
prepares them, with the export and with torch fp32: the AUCs must differ by
at most `model.agreement_max_auc_difference` and the decisions at the
served threshold must be identical on at least
`model.agreement_min_identical_decisions` of the clips. An export that fails
is not installed; its figures go to `<key>.rejected.json` for the record.
bf16 and int8 figures hold for the OpenVINO release (major.minor) and the
CPU instruction sets (AVX2, AVX-512, VNNI, AMX: they pick the kernels) they
were measured with; elsewhere they are ignored until the export is run there.
fp32 needs no data and is made on demand; it is checked against torch on a
seeded synthetic batch (`self_check`) before it is installed.

Calibration and evaluation clips come from labelled folders (labels.csv, read
by `train.data`) or a training run's split.json. NNCF is imported only here,
only for int8.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from angiogate.clip.input import model_input
from angiogate.config import Config
from angiogate.judge.engine import PRECISIONS, TorchEngine, checkpoint_version
from angiogate.judge.model import REASON_CLASSES, ModelInfo, file_digest

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


def ir_stem(digest: str, precision: str) -> str:
    """bf16 runs the fp32 IR (the precision is chosen when it is compiled)."""
    return f"{digest[:12]}-{'int8' if precision == 'int8' else 'fp32'}"


def sidecar_name(digest: str, precision: str) -> str:
    return f"{digest[:12]}-{precision}.json"


def _sha256(path: Path) -> str:
    return file_digest(path)


def _write_json(path: Path, payload: dict) -> None:
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


def _info_from_sidecar(raw: dict) -> ModelInfo:
    raw = dict(raw)
    raw["reason_classes"] = tuple(raw.get("reason_classes", REASON_CLASSES))
    return ModelInfo(**raw)


def _examine(folder: Path, digest: str, precision: str) -> FoundExport | None:
    from angiogate.judge.openvino_engine import cpu_isa, openvino_release

    path = folder / sidecar_name(digest, precision)
    if not path.exists():
        return None
    found = FoundExport(precision, digest)
    try:
        sidecar = json.loads(path.read_text())
        found.sidecar = sidecar
        xml = folder / sidecar["ir"]
        if sidecar.get("format") != SIDECAR_FORMAT:
            found.problem = f"{path}: not an {SIDECAR_FORMAT} sidecar"
        elif sidecar.get("checkpoint_sha256") != digest or sidecar.get("precision") != precision:
            found.problem = f"{path}: made from another checkpoint (sha256 {sidecar.get('checkpoint_sha256')})"
        elif not sidecar.get("passed"):
            found.problem = f"{path}: its check did not pass"
        elif not xml.exists() or not xml.with_suffix(".bin").exists():
            found.problem = f"{path}: IR {xml.name} or its .bin is missing"
        elif (_sha256(xml) != sidecar["ir_sha256"]["xml"]
              or _sha256(xml.with_suffix(".bin")) != sidecar["ir_sha256"]["bin"]):
            found.problem = f"{path}: IR files {xml.name}/.bin do not match the sha256 the sidecar records"
        elif precision != "fp32" and sidecar.get("openvino_release") != openvino_release():
            found.problem = (f"{path}: agreement measured with OpenVINO {sidecar.get('openvino')}, "
                             f"this is {openvino_release()}; run the export again")
        elif precision != "fp32" and sidecar.get("cpu_isa") != cpu_isa():
            found.problem = (f"{path}: agreement measured on a CPU with [{sidecar.get('cpu_isa')}], "
                             f"this one has [{cpu_isa()}]; run the export on this machine")
        else:
            found.xml, found.info, found.passed = xml, _info_from_sidecar(sidecar["info"]), True
    except (OSError, ValueError, KeyError, TypeError) as exc:
        found.problem = f"{path}: unreadable sidecar ({type(exc).__name__}: {exc})"
    return found


def find_exports(checkpoint: Path, export_dir: Path | None, digest: str | None = None) -> dict[str, FoundExport]:
    """Exports of exactly this checkpoint's bytes, by precision.

    The first usable one per precision wins (beside the checkpoint before
    `export_dir`); a precision with only unusable ones maps to one whose
    `problem` says why. Precisions with none are absent.
    """
    digest = digest or file_digest(checkpoint)
    result: dict[str, FoundExport] = {}
    for precision in PRECISIONS:
        for folder in search_folders(checkpoint, export_dir):
            found = _examine(folder, digest, precision)
            if found is None:
                continue
            if found.passed or precision not in result:
                result[precision] = found
            if found.passed:
                break
    return result


# ------------------------------------------------------------------ making

def convert(network, info: ModelInfo):
    """The torch network as an OpenVINO model with a dynamic batch dimension."""
    import openvino as ov
    import torch

    shape = (1, 3, info.num_frames, info.crop_size, info.crop_size)
    with warnings.catch_warnings():  # torch.jit.trace's deprecation and tracer notes: not the operator's news
        warnings.simplefilter("ignore")
        # Traced here rather than by convert_model to skip torch's trace re-check (half the time):
        # the self-check compares the converted model with torch on a batch of another size instead.
        traced = torch.jit.trace(network.eval(), torch.zeros(shape), check_trace=False, strict=False)
        return ov.convert_model(traced, input=[(-1, *shape[1:])])


def _save_ir(model, folder: Path, stem: str) -> Path:
    """Write the IR under a temporary name in `folder`; `_install_ir` renames it into place."""
    import openvino as ov

    tmp = folder / f".{stem}.{os.getpid()}.{int(time.time() * 1000)}.xml"
    ov.save_model(model, str(tmp), compress_to_fp16=False)  # fp16 weights would change the numbers
    return tmp


def _install_ir(tmp_xml: Path, folder: Path, stem: str) -> Path:
    xml = folder / f"{stem}.xml"
    os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp_xml, xml)
    return xml


def _remove_ir(xml: Path) -> None:
    for path in (xml, xml.with_suffix(".bin")):
        path.unlink(missing_ok=True)


def _versions() -> dict:
    import openvino  # noqa: F401
    import torch

    from angiogate.judge.openvino_engine import cpu_isa, cpu_name, openvino_release, openvino_version

    return {"openvino": openvino_version(), "openvino_release": openvino_release(), "torch": torch.__version__,
            "cpu": cpu_name(), "cpu_isa": cpu_isa()}


def _sidecar(torch_engine: TorchEngine, precision: str, xml: Path, **extra) -> dict:
    return {"format": SIDECAR_FORMAT, "precision": precision, "ir": xml.name,
            "ir_sha256": {"xml": _sha256(xml), "bin": _sha256(xml.with_suffix(".bin"))},
            "checkpoint_sha256": torch_engine.digest,
            "checkpoint_version": checkpoint_version(torch_engine.info, torch_engine.digest),
            "info": asdict(torch_engine.info), **_versions(),
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


def _open(xml: Path, torch_engine: TorchEngine, precision: str, threads: int = 0):
    from angiogate.judge.openvino_engine import OpenVINOEngine

    return OpenVINOEngine(xml, torch_engine.info, precision=precision,
                          checkpoint_version=checkpoint_version(torch_engine.info, torch_engine.digest),
                          threads=threads)


def _make_fp32(torch_engine: TorchEngine, folder: Path, threads: int = 0) -> FoundExport:
    """Convert, self-check and install the fp32 IR and its sidecar in `folder`."""
    digest = torch_engine.digest
    stem = ir_stem(digest, "fp32")
    started = time.perf_counter()
    tmp = _save_ir(convert(torch_engine.network, torch_engine.info), folder, stem)
    try:
        difference = self_check(torch_engine, _open(tmp, torch_engine, "fp32", threads))
        if difference > SELF_CHECK_TOLERANCE:
            raise ExportError(f"the fp32 export of {checkpoint_version(torch_engine.info, digest)} differs from "
                              f"torch by {difference:.2e} "
                              f"in probability (allowed {SELF_CHECK_TOLERANCE:.0e}): not installed")
        xml = _install_ir(tmp, folder, stem)
    except BaseException:
        _remove_ir(tmp)
        raise
    sidecar = _sidecar(torch_engine, "fp32", xml, passed=True,
                       self_check={"max_probability_difference": difference, "tolerance": SELF_CHECK_TOLERANCE},
                       seconds=round(time.perf_counter() - started, 1))
    _write_json(folder / sidecar_name(digest, "fp32"), sidecar)
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
    return _make_fp32(TorchEngine(checkpoint, device="cpu", threads=threads), folder, threads)


def _place(export: FoundExport, folder: Path) -> FoundExport:
    """`export` installed in `folder` too (IR files, then the sidecar); the same files, the same key."""
    if export.xml.parent == folder:
        return export
    stem = export.xml.stem
    for suffix in (".bin", ".xml"):
        target = folder / f"{stem}{suffix}"
        if not target.exists() or _sha256(target) != export.sidecar["ir_sha256"][suffix[1:]]:
            tmp = folder / f".{stem}{suffix}.{os.getpid()}.tmp"
            shutil.copyfile(export.xml.with_suffix(suffix), tmp)
            os.replace(tmp, target)
    _write_json(folder / sidecar_name(export.digest, export.precision), export.sidecar)
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
    return [precision for precision, export in found.items() if export.passed and _place(export, folder)]


# ------------------------------------------------------------------ labelled clips

@dataclass(frozen=True)
class LabelledClip:
    path: Path
    target: int  # 1 = unsatisfactory


def clips_from_folders(folders: Sequence[str | Path]) -> list[LabelledClip]:
    """Labelled clips of folders that each hold a labels.csv (`train.data.records_from_csv`)."""
    from train.data import records_from_csv

    return [LabelledClip(r.path, r.target) for folder in folders for r in records_from_csv(folder)]


def clips_from_split(split_json: Path, parts: Sequence[str]) -> list[LabelledClip]:
    """Labelled clips of a training run's split.json (`train`, `validation`, `test`)."""
    split = json.loads(Path(split_json).read_text())
    return [LabelledClip(Path(r["path"]), int(r["label"] == "unsatisfactory")) for part in parts
            for r in split.get(part, [])]


def sample(clips: Sequence[LabelledClip], limit: int, seed: int = 0) -> list[LabelledClip]:
    """At most `limit` clips, a seeded random choice, in their original order."""
    if len(clips) <= limit:
        return list(clips)
    chosen = set(random.Random(seed).sample(range(len(clips)), limit))
    return [clip for i, clip in enumerate(clips) if i in chosen]


def quantize_int8(fp32_model, calibration: Sequence[LabelledClip], info: ModelInfo, config: Config, *,
                  reference: Callable[[np.ndarray], np.ndarray] | None = None,
                  max_mean_difference: float | None = None, validation_share: float = 0.5):
    """NNCF post-training quantisation, calibrated on clips prepared as the judge prepares them.

    With `max_mean_difference` (and `reference`, torch fp32's P(unsatisfactory)
    of a batch), NNCF's accuracy control keeps in fp32 the operations that
    move P(unsatisfactory) most, until its mean absolute difference from
    `reference` over the last `validation_share` of the calibration clips is
    at most `max_mean_difference`. Slow (it re-ranks the operations as it
    goes), so it is asked for, never the default. The evaluation clips of the
    agreement check are never seen here, so that check stays independent.
    """
    try:
        import nncf
    except ImportError as exc:
        raise ExportError("int8 export needs NNCF: pip install 'angiogate[export]' (or nncf)") from exc

    usable = []
    for clip in calibration:
        try:
            usable.append(model_input(clip.path, info, config)[None])
        except (ValueError, OSError) as exc:
            log.warning("calibration clip %s skipped: %s", clip.path, exc)
    if not usable:
        raise ExportError("int8 export: no decodable calibration clip")
    dataset = nncf.Dataset(usable)
    preset = nncf.QuantizationPreset(config.model.int8_preset)  # "performance" | "mixed"
    if max_mean_difference is None:
        return nncf.quantize(fp32_model, dataset, preset=preset, subset_size=len(usable))
    if reference is None:
        raise ExportError("int8 accuracy control needs the torch model's scores as its reference")
    validation = usable[len(usable) - max(1, int(len(usable) * validation_share)):]
    targets = [float(reference(batch)[0]) for batch in validation]
    return nncf.quantize_with_accuracy_control(
        fp32_model, dataset, nncf.Dataset(list(zip(validation, targets))),
        _closeness_to(len(info.reason_classes)), max_drop=max_mean_difference, preset=preset,
        subset_size=len(usable),
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
            ranking_subset_size=min(60, len(validation))))


def _closeness_to(n_reasons: int):
    """NNCF validation function: 1 - mean |P(unsatisfactory) - reference|, and each clip's term.

    One minus, not minus alone: NNCF 3.4 divides by the fp32 model's metric
    even for an absolute drop, and the fp32 IR can match torch exactly (0)."""
    from angiogate.judge.engine import split_logits

    def validate(compiled, items) -> tuple[float, list[float]]:
        output = compiled.output(0)
        terms = [1 - abs(float(split_logits(np.array(compiled(batch)[output]), n_reasons)
                            .unsatisfactory_probability[0]) - target) for batch, target in items]
        return float(np.mean(terms)), terms

    return validate


def fp32_operations(model) -> tuple[int, int]:
    """(weighted operations left in fp32, all weighted operations) of an IR.

    A quantised weight reaches its operation through a FakeQuantize (in
    memory) or as an 8-bit constant behind Convert and scale nodes (in a
    saved IR); anything else is still floating point.
    """
    weighted = [op for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED]
    return sum(1 for op in weighted if not _quantised_weight(op.input_value(1).get_node())), len(weighted)


_WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")


def _quantised_weight(node, depth: int = 0) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
    if depth > 6 or kind not in ("Convert", "Reshape", "Multiply", "Subtract", "Transpose", "Unsqueeze"):
        return False
    return any(_quantised_weight(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size()))


# ------------------------------------------------------------------ agreement

@dataclass
class Agreement:
    """The export against torch fp32 on the same labelled clips."""

    clips: int
    unsatisfactory: int
    threshold: float
    auc_torch: float
    auc_export: float
    auc_difference: float
    identical_decisions: float  # fraction of clips
    flipped: int
    max_probability_difference: float
    max_auc_difference: float
    min_identical_decisions: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_agreement(targets, torch_scores, export_scores, threshold: float, *,
                    max_auc_difference: float, min_identical_decisions: float) -> Agreement:
    """Compare two sets of scores of the same clips; `failures` says by how much a limit was missed."""
    from train.evaluate import roc_auc

    targets = np.asarray(targets, dtype=int)
    torch_scores = np.asarray(torch_scores, dtype=np.float64)
    export_scores = np.asarray(export_scores, dtype=np.float64)
    n = len(targets)
    auc_torch, auc_export = roc_auc(targets, torch_scores), roc_auc(targets, export_scores)
    difference = abs(auc_export - auc_torch)
    flipped = int(np.sum((torch_scores >= threshold) != (export_scores >= threshold)))
    identical = (n - flipped) / n if n else float("nan")
    failures = []
    if n == 0:
        failures.append("no evaluation clip could be scored")
    elif np.isnan(difference):
        failures.append("AUC is undefined: the evaluation set needs both satisfactory and unsatisfactory clips")
    elif difference > max_auc_difference:
        failures.append(f"|AUC difference| {difference:.4f} exceeds {max_auc_difference:.4f} "
                        f"by {difference - max_auc_difference:.4f}")
    if n and identical < min_identical_decisions:
        failures.append(f"identical decisions {identical:.2%} ({flipped} of {n} clips flipped) is "
                        f"{min_identical_decisions - identical:.2%} below the required {min_identical_decisions:.2%}")
    return Agreement(n, int(targets.sum()), float(threshold), auc_torch, auc_export, float(difference), identical,
                     flipped, float(np.abs(torch_scores - export_scores).max(initial=0.0)),
                     max_auc_difference, min_identical_decisions, failures)


def score_both(torch_engine: TorchEngine, export_engine, clips: Sequence[LabelledClip], config: Config,
               batch_size: int = 8, progress: Callable[[int], None] | None = None):
    """(targets, torch scores, export scores, skipped) for the clips that decode."""
    info = torch_engine.info
    targets, ours, theirs, skipped = [], [], [], []
    for start in range(0, len(clips), batch_size):
        batch, batch_targets = [], []
        for clip in clips[start:start + batch_size]:
            try:
                batch.append(model_input(clip.path, info, config))
                batch_targets.append(clip.target)
            except (ValueError, OSError) as exc:
                skipped.append((str(clip.path), str(exc)))
        if batch:
            stacked = np.stack(batch)
            theirs.append(torch_engine.predict(stacked).unsatisfactory_probability)
            ours.append(export_engine.predict(stacked).unsatisfactory_probability)
            targets.extend(batch_targets)
        if progress:
            progress(len(clips[start:start + batch_size]))
    join = lambda parts: np.concatenate(parts) if parts else np.zeros(0)  # noqa: E731
    return np.asarray(targets, dtype=int), join(theirs), join(ours), skipped


# ------------------------------------------------------------------ the export

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
    from angiogate.judge.openvino_engine import cpu_name, cpu_precisions

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
        fp32 = _make_fp32(torch_engine, folder, threads)
    if precision != "int8":
        fp32 = _place(fp32, folder)  # a bf16 sidecar names the fp32 IR beside it
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
        candidate, fresh = _save_ir(quantized, folder, stem), True
        extra["nncf"] = nncf.__version__
        extra["calibration_clips"] = {"used": len(chosen), "of": len(calibration), "seed": seed}
        extra["int8_preset"] = config.model.int8_preset
        if max_mean_difference is not None:
            extra["accuracy_control"] = {"max_mean_difference": max_mean_difference,
                                         "validated_on": "the last half of the calibration clips"}
        left, weighted = fp32_operations(quantized)
        extra["fp32_operations"] = {"left": left, "of": weighted}
    agreement = None
    try:
        export_engine = _open(candidate, torch_engine, precision, threads)
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
        if passed and fresh:
            candidate, fresh = _install_ir(candidate, folder, stem), False
    finally:
        if fresh:
            _remove_ir(candidate)
    accepted = candidate.parent / sidecar_name(digest, precision)
    rejected = folder / sidecar_name(digest, precision).replace(".json", ".rejected.json")
    if not passed:
        if precision == "fp32":  # the converter itself is in doubt: withdraw the fp32 export too
            accepted.unlink(missing_ok=True)
            _remove_ir(candidate)
        _write_json(rejected, {"format": SIDECAR_FORMAT, "precision": precision, "passed": False,
                               "checkpoint_sha256": digest,
                               "checkpoint_version": checkpoint_version(torch_engine.info, digest),
                               **_versions(), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               **extra})
        log.warning("%s export of %s rejected: %s", precision, checkpoint_version(torch_engine.info, digest),
                    "; ".join(agreement.failures))
        return ExportResult(checkpoint, precision, False, None, rejected, extra, agreement,
                            f"{checkpoint_version(torch_engine.info, digest)}/openvino-{_versions()['openvino']}"
                            f"/{precision}")
    sidecar = _sidecar(torch_engine, precision, candidate, passed=True, **extra)
    if precision == "fp32":
        sidecar["self_check"] = fp32.sidecar.get("self_check")
    _write_json(accepted, sidecar)
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
                        " on calibration clips)" if control else ""))
    if result.installed:
        lines.append(f"PASSED: installed {result.xml} (sidecar {result.sidecar_path.name})")
    else:
        lines.append(f"REJECTED, not installed: {'; '.join(agreement.failures)} (figures in {result.sidecar_path})")
    return "\n".join(lines)
