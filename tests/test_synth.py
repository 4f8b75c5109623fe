"""Tests for the synthetic angiogram phantoms (angiogate.synth).

Small clips (64-112 px, 16-24 frames) keep this file fast; the realism of
full-size clips is judged by eye on docs/phantoms_contact_sheet.png.
"""

from __future__ import annotations

import csv
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from angiogate.synth import KINDS, contact_sheet, generate, render_clip, write_xa
from angiogate.synth.kinds import REASONS
from peers import need

DCIODVFY = shutil.which("dciodvfy") or ("/usr/bin/dciodvfy" if Path("/usr/bin/dciodvfy").exists() else None)
_K = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))


def _dark_structure(frame: np.ndarray, threshold: int = 12) -> int:
    """Pixels of thin dark structure (black top-hat), robust to global brightness and motion."""
    smooth = cv2.GaussianBlur(frame, (5, 5), 1.2)
    return int((cv2.morphologyEx(smooth, cv2.MORPH_BLACKHAT, _K) > threshold).sum())


def _growth(frames: np.ndarray) -> float:
    """Growth of dark structure from the first frame to the mid clip, as a fraction of the image."""
    n = len(frames)
    mid = max(_dark_structure(f) for f in frames[int(0.4 * n): int(0.85 * n) + 1])
    return (mid - _dark_structure(frames[0])) / frames[0].size


def _write(path, frames, syntax, fps=15.0, **kw):
    return write_xa(path, frames, frame_rate_hz=fps, syntax=syntax, patient_id="PT1", patient_name="PHANTOM^TEST",
                    study_instance_uid=generate_uid(), series_instance_uid=generate_uid(),
                    sop_instance_uid=generate_uid(), series_number=2, instance_number=1,
                    series_description="Coronary LCA", **kw)


@pytest.fixture(scope="module")
def small_clip():
    return render_clip("left_coronary", 3, 16, 15.0, 64)


def test_catalogue_labels():
    assert {"left_coronary", "right_coronary", "ventriculogram", "aortogram", "catheter_only", "faint_contrast",
            "reflux", "stopped_early", "bypass_graft", "device_obstruction"} <= set(KINDS)
    for k in KINDS.values():
        assert k.label in ("satisfactory", "unsatisfactory")
        assert (k.reason is None) == (k.label == "satisfactory")
        assert k.reason is None or k.reason in REASONS
        assert k.series_descriptions


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_renders_small(kind):
    clip = render_clip(kind, 7, 16, 15.0, 64)
    assert clip.shape == (16, 64, 64) and clip.dtype == np.uint8
    assert clip.std() > 5  # an image, not a constant


def test_unknown_kind_rejected():
    with pytest.raises(ValueError):
        render_clip("selfie", 0, 16, 15.0, 64)


def test_deterministic_by_seed():
    a = render_clip("right_coronary", 11, 20, 7.5, 64)
    b = render_clip("right_coronary", 11, 20, 7.5, 64)
    c = render_clip("right_coronary", 12, 20, 7.5, 64)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_contrast_arrives_in_satisfactory_clips_not_in_catheter_only():
    sat = [_growth(render_clip(k, s, 24, 15.0, 112)) for k in ("left_coronary", "right_coronary") for s in range(4)]
    cath = [_growth(render_clip("catheter_only", s, 24, 15.0, 112)) for s in range(4)]
    assert min(sat) > 0.0015, sat  # vessels darken after the first frame in every satisfactory clip
    assert np.mean(sat) > 4 * max(np.mean(cath), 1e-4), (sat, cath)


def test_contrast_timing_is_in_seconds():
    # the same run at 7.5 and 30 fps fills at the same time, not the same frame index
    slow = render_clip("left_coronary", 5, 24, 7.5, 112)  # 3.2 s
    fast = render_clip("left_coronary", 5, 96, 30.0, 112)  # 3.2 s
    for t in (0.0, 1.6, 2.9):
        a, b = _dark_structure(slow[int(t * 7.5)]), _dark_structure(fast[int(t * 30)])
        assert abs(a - b) <= 0.35 * max(a, b, 50), (t, a, b)


@pytest.mark.parametrize("syntax,uid", [("explicit", "1.2.840.10008.1.2.1"),
                                        ("jpeg-lossless", "1.2.840.10008.1.2.4.70")])
def test_xa_round_trip(tmp_path, small_clip, syntax, uid):
    path = _write(tmp_path / f"{syntax}.dcm", small_clip, syntax, fps=7.5,
                  extra={"PositionerPrimaryAngle": "-30", "PositionerSecondaryAngle": "25"})
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1" and ds.Modality == "XA"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8
    assert int(ds.NumberOfFrames) == 16 and float(ds.FrameTime) == pytest.approx(133.333, abs=1e-3)
    assert ds.FrameIncrementPointer == pydicom.tag.Tag("FrameTime")
    assert float(ds.PositionerPrimaryAngle) == -30 and int(ds.CineRate) == 8
    assert open(path, "rb").read()[128:132] == b"DICM"
    assert np.array_equal(ds.pixel_array, small_clip)


@pytest.mark.parametrize("plugin", ["pylibjpeg", "gdcm"])
def test_jpeg_lossless_decodes_exactly_with_each_plugin(tmp_path, small_clip, plugin):
    importlib.import_module(plugin)  # both are dependencies of the package: missing is a failure
    path = _write(tmp_path / "j.dcm", small_clip, "jpeg-lossless")
    # In a fresh interpreter: angiogate.judge.decode removes pydicom's gdcm plugin from the
    # gate's own process (GDCM aborts on corrupt JPEG), but downstream readers use it.
    out = tmp_path / "decoded.npy"
    code = ("import sys, numpy; from pydicom.pixels import pixel_array; "
            "numpy.save(sys.argv[3], pixel_array(sys.argv[1], decoding_plugin=sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(path), plugin, str(out)], check=True, timeout=120)
    assert np.array_equal(np.load(out), small_clip)


@pytest.mark.parametrize("syntax", ["explicit", "jpeg-lossless"])
def test_dciodvfy_reports_no_errors(tmp_path, small_clip, syntax):
    need(DCIODVFY, "dciodvfy (Debian package dicom3tools) is not installed")
    path = _write(tmp_path / "v.dcm", small_clip, syntax)
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert "XAImage" in text
    assert not [ln for ln in text.splitlines() if ln.startswith("Error")], text


def test_generate_writes_consistent_labels(tmp_path):
    rows = generate(tmp_path / "a", per_kind=1, seed=4, size=64, min_seconds=1.0, max_seconds=2.0,
                    frame_rates=(15.0, 30.0), patients=3)
    assert len(rows) == len(KINDS)
    with open(tmp_path / "a" / "labels.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["file", "sop_instance_uid", "study_instance_uid", "patient_id", "kind", "label",
                              "reason", "frame_rate_hz", "frames", "syntax"]
    assert {r["kind"] for r in table} == set(KINDS)
    studies = {}
    for r in table:
        ds = pydicom.dcmread(tmp_path / "a" / r["file"])
        assert ds.SOPInstanceUID == r["sop_instance_uid"] and ds.StudyInstanceUID == r["study_instance_uid"]
        assert ds.PatientID == r["patient_id"] and int(ds.NumberOfFrames) == int(r["frames"])
        assert float(ds.FrameTime) == pytest.approx(1000 / float(r["frame_rate_hz"]), rel=1e-4)
        assert 20 <= int(r["frames"]) <= 100
        syntax = {"explicit": "1.2.840.10008.1.2.1", "jpeg-lossless": "1.2.840.10008.1.2.4.70"}[r["syntax"]]
        assert ds.file_meta.TransferSyntaxUID == syntax
        k = KINDS[r["kind"]]
        assert r["label"] == k.label and r["reason"] == (k.reason or "")
        studies.setdefault(r["patient_id"], set()).add(r["study_instance_uid"])
    assert len(studies) == 3 and all(len(s) == 1 for s in studies.values())  # one study per patient
    assert len({r["study_instance_uid"] for r in table}) == 3
    # same seed -> same UIDs and byte-identical pixel data
    again = generate(tmp_path / "b", per_kind=1, seed=4, size=64, min_seconds=1.0, max_seconds=2.0,
                     frame_rates=(15.0, 30.0), patients=3, kinds=list(KINDS))
    assert again == rows
    for r in rows[:3]:
        a = pydicom.dcmread(tmp_path / "a" / r["file"]).PixelData
        b = pydicom.dcmread(tmp_path / "b" / r["file"]).PixelData
        assert a == b


def test_contact_sheet_png(tmp_path):
    generate(tmp_path / "g", per_kind=1, seed=1, size=64, kinds=["left_coronary", "aortogram"],
             min_seconds=1.0, max_seconds=1.5)
    png = contact_sheet(tmp_path / "g", tmp_path / "sheet.png", tile=64)
    img = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape[0] >= 2 * 64
    clips = [(render_clip("reflux", 2, 16, 15.0, 64), "reflux\nunsatisfactory")]
    assert cv2.imread(str(contact_sheet(clips, tmp_path / "s2.png"))) is not None


def test_generator_version_covers_every_module_that_draws():
    """A new renderer module must join the version digest, or synth.json would not see it change."""
    from angiogate.synth import manifest

    here = Path(manifest.__file__).parent
    modules = {p.name for p in here.glob("*.py")}
    assert modules == set(manifest._CONTENT_MODULES) | set(manifest._NOT_CONTENT), modules
