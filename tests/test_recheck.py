"""Exports checked where they run (issue 16, item 1), with a model that decides something.

An int8 export whose agreement was measured on a CPU with other instruction
sets is not trusted here: fp32 serves and a re-check is wanted. The re-check
(`python -m angiogate.export.recheck`, started by the gate) renders its own
deterministic phantoms, scores them with torch fp32 and the export, and writes
this CPU's record; a running gate then switches between two clips. The model
is the tiny X3D-S with a head fitted to the re-check's own phantoms
(`deciding_model.py`): its scores spread, so the bar can fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from deciding_model import make_deciding_checkpoint  # noqa: E402
from peers import wait_for  # noqa: E402

from angiogate.config import load_config  # noqa: E402
from angiogate.engines import exports  # noqa: E402
from angiogate.engines.choose import open_engine  # noqa: E402
from angiogate.engines.model import file_digest  # noqa: E402
from angiogate.engines.openvino_engine import cpu_isa, cpu_precisions  # noqa: E402
from angiogate.engines.torch_engine import TorchEngine  # noqa: E402
from angiogate.export.agreement import check_agreement, score_both  # noqa: E402
from angiogate.export.recheck import make_inputs  # noqa: E402
from angiogate.export.run import run_export  # noqa: E402
from angiogate.modelstore import recheck  # noqa: E402

PER_KIND, SIZE = 2, 96  # the re-check's phantoms in these tests: 20 of every kind's + 10 of the real kind
OTHER_CPU = "avx2 avx512f avx512_bf16 avx512_vnni amx_int8"

pytestmark = pytest.mark.skipif("int8" not in cpu_precisions(), reason="this CPU has no int8 in OpenVINO")


@pytest.fixture(scope="module")
def recheck_clips(tmp_path_factory):
    """The clips the re-check child scores with these settings (it renders the same ones)."""
    return make_inputs(tmp_path_factory.mktemp("recheck-inputs"), PER_KIND, SIZE)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, recheck_clips) -> Path:
    """A deciding checkpoint with an fp32 export and an "int8" export whose sidecar says it was
    checked on another CPU, as the bundled model's is on this one: a model folder to copy per test.

    The "int8" IR is the fp32 IR under the int8 name: NNCF's int8 of a head fitted on an untrained
    network's features moves its scores by up to 0.3 (see the test below), so it could never pass;
    what is tested here is the re-check and the switch, with the real bar on scores that spread."""
    folder = tmp_path_factory.mktemp("shipped") / "model"
    folder.mkdir()
    config = load_config()
    checkpoint = make_deciding_checkpoint(folder / "deciding.pt", recheck_clips, config)
    fp32 = exports.ensure_fp32(checkpoint, None)
    digest = file_digest(checkpoint)
    stem = exports.ir_stem(digest, "int8")
    for suffix in (".xml", ".bin"):
        shutil.copyfile(fp32.xml.with_suffix(suffix), fp32.xml.parent / f"{stem}{suffix}")
    sidecar = exports.sidecar_for(TorchEngine(checkpoint, device="cpu"), "int8", fp32.xml.parent / f"{stem}.xml",
                                  passed=True)
    exports.write_json(fp32.xml.parent / exports.sidecar_name(digest, "int8"), sidecar | {"cpu_isa": OTHER_CPU})
    return checkpoint


def _copy(checkpoint: Path, folder: Path) -> Path:
    shutil.copytree(checkpoint.parent, folder)
    return folder / checkpoint.name


def _config(tmp_path: Path, **model):
    return load_config(model={"export_dir": str(tmp_path / "exports"), "recheck_phantoms_per_kind": PER_KIND,
                              "recheck_phantom_size": SIZE, **model})


# ------------------------------------------------------------------ a model that decides

def test_the_deciding_model_spreads_its_scores_and_the_bar_can_fail(shipped, recheck_clips, tmp_path):
    config = load_config()
    torch_engine = TorchEngine(shipped, device="cpu")
    fp32 = open_engine(shipped, engine="openvino", precision="fp32")
    targets, torch_scores, _, _ = score_both(torch_engine, fp32, recheck_clips, config)
    assert torch_scores.max() - torch_scores.min() > 0.5  # not the untrained model's 0.4994-0.5003
    decisions = torch_scores >= torch_engine.info.threshold
    assert 0 < decisions.sum() < len(decisions)  # both decisions occur
    limits = dict(max_auc_difference=config.model.agreement_max_auc_difference,
                  min_identical_decisions=config.model.agreement_min_identical_decisions)
    # A constant output, which passed the agreement tests with the untrained model, fails here.
    constant = check_agreement(targets, torch_scores, np.full_like(torch_scores, 0.5), 0.5, **limits)
    assert not constant.passed and any("AUC difference" in f for f in constant.failures)
    assert any("identical decisions" in f for f in constant.failures)
    # So does a real int8 quantisation of it: its check is not passed and it is not installed.
    checkpoint = _copy(shipped, tmp_path / "model")
    for stale in exports.beside(checkpoint).glob("*-int8.*"):
        stale.unlink()
    result = run_export(checkpoint, "int8", load_config(), calibration=recheck_clips, evaluation=recheck_clips)
    assert not result.installed and result.agreement.failures


# ------------------------------------------------------------------ (a) not trusted elsewhere

def test_a_record_for_other_instruction_sets_is_not_trusted_and_asks_for_a_recheck(shipped, tmp_path):
    checkpoint = _copy(shipped, tmp_path / "model")
    config = _config(tmp_path)
    found = exports.find_exports(checkpoint, config.model.export_folder)
    assert not found["int8"].passed and found["int8"].measured_elsewhere
    assert f"[{OTHER_CPU}]" in found["int8"].problem
    engine = open_engine(checkpoint, convert_missing=False, export_dir=config.model.export_folder)
    assert engine.version.endswith("/fp32")
    assert "measured on another CPU" in engine.serving_reason
    assert recheck.wanted(checkpoint, config) == ["int8"]
    assert recheck.wanted(checkpoint, _config(tmp_path, recheck_phantoms_per_kind=0)) == []


def test_this_cpus_record_decides_passed_or_failed_and_is_never_rechecked(shipped, tmp_path):
    checkpoint = _copy(shipped, tmp_path / "model")
    config = _config(tmp_path)
    digest = file_digest(checkpoint)
    folder = exports.beside(checkpoint)
    sidecar = json.loads((folder / exports.sidecar_name(digest, "int8")).read_text())
    here = folder / exports.here_record_name(digest, "int8")
    exports.write_json(here, sidecar | {"cpu_isa": cpu_isa(), "passed": False})
    assert recheck.wanted(checkpoint, config) == []  # a failed re-check is not run again
    engine = open_engine(checkpoint, convert_missing=False)
    assert engine.version.endswith("/fp32") and "failed its agreement re-check" in engine.serving_reason
    exports.write_json(here, sidecar | {"cpu_isa": cpu_isa()})
    assert open_engine(checkpoint, convert_missing=False).version.endswith("/int8")
    exports.write_json(here, sidecar | {"cpu_isa": OTHER_CPU})  # a record under this CPU's name but not its figures
    assert open_engine(checkpoint, convert_missing=False).version.endswith("/fp32")


# ------------------------------------------------------------------ (b) switched between two clips

def test_a_passed_recheck_switches_a_running_gate_from_fp32_to_int8_between_two_clips(
        gate_factory, shipped, phantoms, tmp_path):
    checkpoint = _copy(shipped, tmp_path / "model")
    # This CPU's record goes to the site's export folder, never beside a shipped checkpoint.
    record = tmp_path / "exports" / exports.here_record_name(file_digest(checkpoint), "int8")
    shipped_files = sorted(p.name for p in exports.beside(checkpoint).iterdir())
    phantom_dir, rows = phantoms
    clips = [phantom_dir / r["file"] for r in rows][:2]
    # The association idles while the re-check runs (over a minute on a loaded CPU): neither
    # end may close it for idleness before the switch, or the test would time the re-check.
    idle_s = 600
    gate = gate_factory({"network_timeout_s": idle_s,
                         "model": {"path": str(checkpoint), "reload_check_s": 0.3,
                                   "export_dir": str(tmp_path / "exports"),
                                   "recheck_phantoms_per_kind": PER_KIND, "recheck_phantom_size": SIZE}}).start()
    ae = AE(ae_title="MODALITY")
    ae.network_timeout = ae.dimse_timeout = idle_s
    for clip in clips:
        meta = pydicom.dcmread(clip, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(pydicom.dcmread(clips[0])).Status == 0
        first = gate.wait_settled(1)[0]
        assert not record.exists(), "the re-check finished before the first clip was judged"
        wait_for(lambda: "serving model switched" in gate.log_text(), 300, "the switch to int8", gate)
        assert assoc.is_established  # the switch did not touch the association
        assert assoc.send_c_store(pydicom.dcmread(clips[1])).Status == 0
    finally:
        assoc.release()
    verdicts = gate.wait_settled(2)
    assert first["model_version"].endswith("/fp32") and verdicts[0]["model_version"] == first["model_version"]
    assert verdicts[1]["model_version"].endswith("/int8")
    assert [v["judge_attempts"] for v in verdicts] == [1, 1]
    result = json.loads(record.read_text())
    assert result["passed"] and result["cpu_isa"] == cpu_isa() and result["recheck"]["of"]["cpu_isa"] == OTHER_CPU
    assert result["agreement"]["clips"] == 10 * PER_KIND + 10 * max(1, PER_KIND // 5)
    log = gate.log_text()
    assert "re-checked on this CPU" in log and "PASSED" in log
    assert "serves while their agreement with torch fp32 is re-checked" in log
    assert sorted(p.name for p in exports.beside(checkpoint).iterdir()) == shipped_files


# ------------------------------------------------------------------ bench: timed after the re-check

def test_bench_re_checks_first_so_no_section_times_a_re_check(shipped, tmp_path):
    """`bench` runs the re-check a gate would run in the background before any section is timed,
    and its children's site files name the same export folder, so none of them re-checks again."""
    from angiogate.bench.model import resolve_serving_model, settle_recheck, site_file

    checkpoint = _copy(shipped, tmp_path / "model")
    config = _config(tmp_path, path=str(checkpoint))
    serving = resolve_serving_model(config, tmp_path)
    said: list[str] = []
    outcome = settle_recheck(config, serving, tmp_path, progress=said.append)
    assert outcome is not None and outcome.startswith("int8 re-checked on this CPU before timing: ")
    assert "PASSED" in outcome or "FAILED" in outcome
    assert said == ["model: re-checking the int8 export(s) measured on another CPU, as a settled gate would have"]
    record = tmp_path / "exports" / exports.here_record_name(file_digest(checkpoint), "int8")
    assert json.loads(record.read_text())["cpu_isa"] == cpu_isa()
    said.clear()
    assert settle_recheck(config, serving, tmp_path, progress=said.append) is None  # settled: nothing to re-check
    assert said == []  # and it does not say it is re-checking

    site = load_config(site_file(config, checkpoint, tmp_path / "site.yaml"))
    assert site.model.export_folder == (tmp_path / "exports").resolve()
