"""The `angiogate` command as a user runs it (subprocesses, real output)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def angiogate(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "angiogate", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_check_config_names_the_wrong_key(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("rules:\n  min_frams: 3\n")
    out = angiogate("check-config", "--config", bad)
    assert out.returncode == 2 and "rules.min_frams" in out.stderr
    bad.write_text("destinations:\n  - {ae_title: PACS, host: 127.0.0.1, port: 0}\n")
    out = angiogate("check-config", "--config", bad)
    assert out.returncode == 2 and "destinations.0.port" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text("port: 11113\n")
    out = angiogate("check-config", "--config", good)
    assert out.returncode == 0 and json.loads(out.stdout)["port"] == 11113


def test_score_json_one_object_per_file(samples_dir, tiny_checkpoint, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(f"model: {{path: {tiny_checkpoint}}}\n")
    files = [samples_dir / "XA-MONO2-8-12x-catheter.dcm", samples_dir / "XA1_JPLY.dcm", samples_dir / "XA1_UNC.dcm"]
    out = angiogate("score", "--json", "--config", site, *files)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    for line in lines:
        assert {"file", "sop_instance_uid", "decision", "score", "reasons"} <= set(line)
    assert [line["decision"] for line in lines] == ["unsatisfactory", "error", "not_applicable"]
    assert "min_duration" in lines[0]["failed_rules"]
    assert "x3d_s-untrained-test" in out.stderr  # the banner names the model


def test_score_rules_only_says_so(samples_dir, tmp_path):
    """Rules alone still include the pixel rule: the real catheter run (no contrast arrives) is held
    by `contrast_arrival` once its short duration is allowed, and passes with that rule off too."""
    site = tmp_path / "site.yaml"
    site.write_text("model: {path: none}\nrules: {min_duration_s: 0.1}\n")
    out = angiogate("score", "--json", "--config", site, samples_dir / "XA-MONO2-8-12x-catheter.dcm")
    line = json.loads(out.stdout)
    assert line["decision"] == "unsatisfactory" and line["score"] is None
    assert line["reason_code"] == "contrast_arrival" and line["failed_rules"] == ["contrast_arrival"]
    assert line["reasons"][-1] == "rules only: no classifier model loaded"
    assert line["model_version"] == "none (rules only)"
    assert "rules alone" in out.stderr
    site.write_text("model: {path: none}\nrules: {min_duration_s: 0.1, min_contrast_arrival: null}\n")
    line = json.loads(angiogate("score", "--json", "--config", site, samples_dir / "XA-MONO2-8-12x-catheter.dcm").stdout)
    assert line["decision"] == "satisfactory" and line["reasons"] == ["rules only: no classifier model loaded"]


def test_echo_command_against_a_gate(gate_factory):
    gate = gate_factory({"model": {"path": "none"}}).start()
    out = angiogate("echo", "127.0.0.1", gate.port, "-aec", "ANGIOGATE", "-aet", "MYSCU")
    assert out.returncode == 0 and "status 0x0000" in out.stdout
    assert "C-ECHO from MYSCU" in gate.log_text()  # -aet is the calling AE title, as in DCMTK
    out = angiogate("echo", "127.0.0.1", gate.port, "-aec", "NOT_THE_GATE")
    assert out.returncode == 1  # the gate refuses associations to another called AE title


def test_synth_writes_dicom_and_labels(tmp_path):
    import pydicom
    out = angiogate("synth", tmp_path / "ph", "--size", "64", "--preview")
    assert out.returncode == 0, out.stderr
    assert "not clinical" in out.stderr
    labels = (tmp_path / "ph" / "labels.csv").read_text().splitlines()
    files = sorted((tmp_path / "ph").rglob("*.dcm"))
    assert len(files) == len(labels) - 1 >= 10
    syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    assert syntaxes == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"}
    assert (tmp_path / "ph" / "contact_sheet.png").stat().st_size > 1000


def test_synth_manifest_names_the_generator_and_remakes_the_same_clips(tmp_path):
    """synth.json records the generator's version and a command; that command, run into
    another folder, writes the same clips (same UIDs, same pixel bytes)."""
    import shlex

    first = tmp_path / "a"
    out = angiogate("synth", first, "--size", "64", "--per-kind", "1", "--seed", "7",
                    "--kinds", "left_coronary,reflux", "--syntax", "explicit")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((first / "synth.json").read_text())
    assert manifest["generator"].startswith("angiogate.synth@") and manifest["seed"] == 7
    assert manifest["clips"] == 2 and manifest["kinds"] == ["left_coronary", "reflux"]
    argv = shlex.split(manifest["command"])
    assert argv[:3] == ["angiogate", "synth", str(first)]
    second = tmp_path / "b"
    out = angiogate(*argv[1:2], second, *argv[3:])
    assert out.returncode == 0, out.stderr
    assert (first / "labels.csv").read_text() == (second / "labels.csv").read_text()
    for clip in sorted(first.rglob("*.dcm")):
        assert clip.read_bytes() == (second / clip.relative_to(first)).read_bytes()
