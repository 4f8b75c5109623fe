"""Unit tests of angiogate/dicom/header.py and angiogate/judge/rules.py."""
from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from angiogate.config import Rules, default_yaml
from angiogate.dicom.header import HeaderError, frame_rate, header_from_dataset, read_header
from angiogate.judge.rules import RuleResult, evaluate_rules, header_problems, is_cine

# the catheter clip's UIDs (999.999...) are not conformant; pydicom warns lazily
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

XA = "1.2.840.10008.5.1.4.1.1.12.1"
ENHANCED_XA = "1.2.840.10008.5.1.4.1.1.12.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def rules() -> Rules:
    return Rules.model_validate(default_yaml()["rules"])


def make_rules(**changes) -> Rules:
    return Rules.model_validate({**default_yaml()["rules"], **changes})


def xa_dataset(*, frames: int | None = 30, frame_time_ms: float | None = 133.33, modality: str = "XA",
               sop_class: str = XA, description: str | None = "Coronary LCA", rows: int = 512,
               columns: int = 512, pixel_data: bool = True, bits_allocated: int = 8) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P001"
    ds.AccessionNumber = "ACC42"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 7
    ds.Modality = modality
    if description is not None:
        ds.SeriesDescription = description
    ds.Rows = rows
    ds.Columns = columns
    if frames is not None:
        ds.NumberOfFrames = frames
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_allocated
    ds.HighBit = bits_allocated - 1
    ds.PixelRepresentation = 0
    if pixel_data:
        ds.PixelData = b"\0\0"  # header rules never look at the bytes
    return ds


def header(**kw):
    return header_from_dataset(xa_dataset(**kw))


def by_rule(results: list[RuleResult]) -> dict[str, RuleResult]:
    return {r.rule: r for r in results}


def failed(results: list[RuleResult]) -> set[str]:
    return {r.rule for r in results if not r.passed}


# --- frame rate ---------------------------------------------------------------

def test_frame_rate_from_frame_time():
    ds = Dataset()
    ds.FrameTime = 133.33
    rate, source = frame_rate(ds)
    assert rate == pytest.approx(7.5, abs=1e-3)
    assert source == "FrameTime"


def test_frame_time_wins_over_cine_rate_and_display_rate_siemens():
    ds = Dataset()
    ds.FrameTime = 133.33
    ds.CineRate = 7
    ds.RecommendedDisplayFrameRate = 8
    rate, source = frame_rate(ds)
    assert rate == pytest.approx(7.5, abs=1e-3)
    assert source == "FrameTime"


def test_frame_rate_from_frame_time_vector():
    ds = Dataset()
    ds.FrameTimeVector = [0, 66.7, 66.6, 66.7, 66.7]
    ds.CineRate = 30
    rate, source = frame_rate(ds)
    assert rate == pytest.approx(1000 / 66.7, rel=1e-6)
    assert source == "FrameTimeVector"


def test_frame_time_vector_all_zero_falls_through():
    ds = Dataset()
    ds.FrameTimeVector = [0, 0, 0]
    ds.CineRate = 15
    assert frame_rate(ds) == (15.0, "CineRate")


def test_frame_rate_from_cine_rate_then_display_rate():
    ds = Dataset()
    ds.CineRate = 7
    ds.RecommendedDisplayFrameRate = 8
    assert frame_rate(ds) == (7.0, "CineRate")
    del ds.CineRate
    assert frame_rate(ds) == (8.0, "RecommendedDisplayFrameRate")


def test_zero_frame_time_is_ignored():
    ds = Dataset()
    ds.FrameTime = 0
    ds.RecommendedDisplayFrameRate = 15
    assert frame_rate(ds) == (15.0, "RecommendedDisplayFrameRate")


def test_no_timing_gives_none():
    assert frame_rate(Dataset()) == (None, None)
    h = header(frame_time_ms=None)
    assert h.frame_rate_hz is None
    assert h.frame_rate_source is None
    assert h.duration_s is None


def test_enhanced_xa_timing_in_shared_functional_groups():
    ds = Dataset()
    content = Dataset()
    content.FrameAcquisitionDuration = 66.67
    group = Dataset()
    group.FrameContentSequence = [content]
    ds.SharedFunctionalGroupsSequence = [group]
    rate, _ = frame_rate(ds)
    assert rate == pytest.approx(15.0, abs=1e-2)


def test_single_valued_frame_time_vector_does_not_crash():
    ds = Dataset()
    ds.FrameTimeVector = [33.3]
    ds.CineRate = 15
    assert frame_rate(ds) == (15.0, "CineRate")


# --- header facts -------------------------------------------------------------

def test_header_from_dataset_facts():
    ds = xa_dataset(frames=30, frame_time_ms=133.33)
    h = header_from_dataset(ds)
    assert h.sop_class_uid == XA
    assert h.sop_instance_uid == ds.SOPInstanceUID
    assert h.study_instance_uid == ds.StudyInstanceUID
    assert h.series_instance_uid == ds.SeriesInstanceUID
    assert h.patient_id == "P001"
    assert h.accession_number == "ACC42"
    assert (h.series_number, h.instance_number) == (3, 7)
    assert h.modality == "XA"
    assert h.series_description == "Coronary LCA"
    assert h.transfer_syntax_uid == ExplicitVRLittleEndian
    assert (h.rows, h.columns, h.frames) == (512, 512, 30)
    assert h.frame_rate_hz == pytest.approx(7.5, abs=1e-3)
    assert h.duration_s == pytest.approx(4.0, abs=1e-3)
    assert h.bits_allocated == 8
    assert h.samples_per_pixel == 1
    assert h.has_pixel_data


def test_header_without_number_of_frames_is_one_frame():
    assert header(frames=None).frames == 1
    assert header(frames=None, pixel_data=False).frames is None


def test_uids_fall_back_to_file_meta():
    ds = xa_dataset()
    ds.file_meta.MediaStorageSOPClassUID = XA
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    del ds.SOPClassUID
    del ds.SOPInstanceUID
    h = header_from_dataset(ds)
    assert (h.sop_class_uid, h.sop_instance_uid) == (XA, "1.2.3.4")


# --- header_problems ------------------------------------------------------------

def test_sane_header_has_no_problems(rules):
    assert header_problems(header(), rules) == []


def test_no_pixel_data_is_a_problem(rules):
    assert header_problems(header(pixel_data=False), rules) == ["no pixel data"]


@pytest.mark.parametrize("rows, columns", [(5000, 512), (512, 65535), (0, 512)])
def test_absurd_dimensions_are_a_problem(rules, rows, columns):
    problems = header_problems(header(rows=rows, columns=columns), rules)
    assert len(problems) == 1
    assert "Rows/Columns" in problems[0] or "absurd dimensions" in problems[0]
    assert f"{rows}x{columns}" in problems[0]


@pytest.mark.parametrize("frames", [2001, 100000, 0])
def test_number_of_frames_outside_limits_is_a_problem(rules, frames):
    problems = header_problems(header(frames=frames), rules)
    assert problems == [f"NumberOfFrames {frames} outside 1..{rules.max_frames}"]


def test_max_frames_is_inclusive(rules):
    assert header_problems(header(frames=rules.max_frames), rules) == []


def test_unsupported_bits_allocated_is_a_problem(rules):
    problems = header_problems(header(bits_allocated=32), rules)
    assert any("BitsAllocated 32" in p for p in problems)


# --- is_cine --------------------------------------------------------------------

def test_multi_frame_xa_is_cine(rules):
    assert is_cine(header(frames=30), rules)
    assert is_cine(header(frames=2, sop_class=ENHANCED_XA), rules)


def test_single_frame_is_not_cine(rules):
    assert not is_cine(header(frames=1), rules)
    assert not is_cine(header(frames=None), rules)


@pytest.mark.parametrize("sop_class", [SECONDARY_CAPTURE, CT])
def test_other_sop_classes_are_not_cine(rules, sop_class):
    assert not is_cine(header(frames=30, sop_class=sop_class), rules)


# --- evaluate_rules -------------------------------------------------------------

def test_normal_coronary_clip_passes_every_rule(rules):
    results = evaluate_rules(header(description="Coronary LCA", frames=30, frame_time_ms=133.33), rules)
    assert [r.rule for r in results] == ["modality", "frame_rate", "min_frames", "min_duration",
                                         "series_description"]
    assert all(r.passed for r in results), results
    assert all(isinstance(r.detail, str) and r.detail for r in results)


@pytest.mark.parametrize("description", ["Coronary RCA", "LAD RAO cranial", "Left coronary LAO 30 CAU 20",
                                         "LCX", None])
def test_coronary_descriptions_pass(rules, description):
    results = by_rule(evaluate_rules(header(description=description), rules))
    assert results["series_description"].passed


def test_modality_ct_fails(rules):
    results = evaluate_rules(header(modality="CT"), rules)
    assert failed(results) == {"modality"}
    assert "CT" in by_rule(results)["modality"].detail


def test_rf_modality_passes(rules):
    assert "modality" not in failed(evaluate_rules(header(modality="RF"), rules))


def test_frame_rate_below_minimum_fails(rules):
    results = evaluate_rules(header(frames=60, frame_time_ms=250.0), rules)  # 4 Hz, 15 s
    assert failed(results) == {"frame_rate"}
    assert "below minimum" in by_rule(results)["frame_rate"].detail


def test_frame_rate_above_maximum_fails(rules):
    results = evaluate_rules(header(frames=400, frame_time_ms=10.0), rules)  # 100 Hz
    assert failed(results) == {"frame_rate"}
    assert "above maximum" in by_rule(results)["frame_rate"].detail


def test_missing_frame_rate_passes_unless_required(rules):
    h = header(frame_time_ms=None, frames=30)  # assumed 15 Hz: 2 s
    assert failed(evaluate_rules(h, rules)) == set()
    assert failed(evaluate_rules(h, make_rules(require_frame_rate=True))) == {"frame_rate"}


def test_too_few_frames_fails(rules):
    results = evaluate_rules(header(frames=7, frame_time_ms=133.33), rules)
    assert {"min_frames", "min_duration"} == failed(results)
    assert "7 frames" in by_rule(results)["min_frames"].detail


def test_too_short_fails(rules):
    # 10 frames at 7.5 fps = 1.33 s: enough frames, too short to show filling.
    results = evaluate_rules(header(frames=10, frame_time_ms=133.33), rules)
    assert failed(results) == {"min_duration"}
    # 12 frames at 7.5 fps = 1.6 s passes.
    assert failed(evaluate_rules(header(frames=12, frame_time_ms=133.33), rules)) == set()


@pytest.mark.parametrize("description", ["LV gram", "Ao root", "SVG 1", "LIMA to LAD", "Aortogram",
                                         "ventriculogram", "Bypass graft RCA"])
def test_excluded_series_descriptions_fail(rules, description):
    results = by_rule(evaluate_rules(header(description=description), rules))
    assert not results["series_description"].passed
    assert "exclude pattern" in results["series_description"].detail


def test_include_patterns_must_match_when_set():
    strict = make_rules(series_description_include=[r"coronary|\bLCA\b|\bRCA\b"])
    assert failed(evaluate_rules(header(description="Coronary LCA"), strict)) == set()
    assert failed(evaluate_rules(header(description="Run 4"), strict)) == {"series_description"}


def test_first_n_clips_rule_uses_rank():
    first_ten = make_rules(max_clips_per_study=10)
    h = header()
    passing = by_rule(evaluate_rules(h, first_ten, clip_rank_in_study=10))
    assert passing["first_clips_of_study"].passed
    failing = by_rule(evaluate_rules(h, first_ten, clip_rank_in_study=11))
    assert not failing["first_clips_of_study"].passed
    assert "clip 11" in failing["first_clips_of_study"].detail
    # Without a rank, or without a limit, the rule is not applied.
    assert "first_clips_of_study" not in by_rule(evaluate_rules(h, first_ten))
    assert "first_clips_of_study" not in by_rule(evaluate_rules(h, make_rules(), clip_rank_in_study=50))


def test_rule_result_as_dict():
    assert RuleResult("modality", True, "XA").as_dict() == {"rule": "modality", "passed": True, "detail": "XA"}


# --- read_header on files -------------------------------------------------------

def test_read_header_of_written_file(tmp_path):
    ds = xa_dataset(frames=2, rows=2, columns=2)
    ds.PixelData = bytes(8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "clip.dcm"
    ds.save_as(path, enforce_file_format=True)
    h = read_header(path)
    assert h.sop_instance_uid == ds.SOPInstanceUID
    assert h.frames == 2
    assert h.has_pixel_data
    assert h.frame_rate_hz == pytest.approx(7.5, abs=1e-3)


def test_read_header_of_catheter_sample(samples_dir, rules):
    h = read_header(samples_dir / "XA-MONO2-8-12x-catheter.dcm")
    assert h.modality == "XA"
    assert h.sop_class_uid == XA
    assert h.frames == 12
    assert (h.rows, h.columns) == (512, 512)
    assert h.frame_rate_hz == pytest.approx(1000 / 33, rel=1e-6)  # ~30.3 Hz
    assert h.frame_rate_source == "FrameTime"
    assert h.transfer_syntax_uid == "1.2.840.10008.1.2.4.70"
    assert h.has_pixel_data
    assert header_problems(h, rules) == []
    assert is_cine(h, rules)
    # 12 frames at ~30 fps is 0.4 s: too short to show filling.
    assert failed(evaluate_rules(h, rules)) == {"min_duration"}


def test_read_header_of_secondary_capture_sample(samples_dir, rules):
    h = read_header(samples_dir / "XA1_UNC.dcm")
    assert h.modality == "XA"
    assert h.sop_class_uid == SECONDARY_CAPTURE
    assert h.frames == 1
    assert not is_cine(h, rules)


@pytest.mark.parametrize("keep_bytes", [0, 10, 100, 140])
def test_read_header_of_truncated_file_raises(samples_dir, tmp_path, keep_bytes):
    path = tmp_path / "truncated.dcm"
    path.write_bytes((samples_dir / "XA-MONO2-8-12x-catheter.dcm").read_bytes()[:keep_bytes])
    with pytest.raises(HeaderError):
        read_header(path)


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_read_header_of_file_truncated_in_pixel_data_raises(samples_dir, tmp_path):
    data = (samples_dir / "XA-MONO2-8-12x-catheter.dcm").read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(HeaderError):
        read_header(path)


@pytest.mark.parametrize("content", [b"hello, this is not DICOM\n" * 20, bytes(range(256)) * 8, b""])
def test_read_header_of_non_dicom_file_raises(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(HeaderError, match="DICOM"):
        read_header(path)


def test_read_header_of_missing_file_raises(tmp_path):
    with pytest.raises(HeaderError):
        read_header(tmp_path / "absent.dcm")


def test_header_is_immutable():
    h = header()
    with pytest.raises(FrozenInstanceError):
        h.frames = 3  # type: ignore[misc]
    assert replace(h, frames=3).frames == 3


def test_a_uid_with_several_values_is_kept_as_encoded_not_as_a_python_list():
    """A mangled length can give one UID several values; the log must not hold "['1.2', ...]"."""
    ds = xa_dataset()
    ds.SOPInstanceUID = ["1.2.3.4", "5.6"]
    h = header_from_dataset(ds)
    assert h.sop_instance_uid == "1.2.3.4\\5.6"
