"""Inference engines: OpenVINO against torch, exports versioned with their checkpoint, auto selection.

The tiny untrained checkpoint scores every clip about 0.5, so these tests
check the machinery (numbers, keys, choices, refusals), not a model's
quality: fp32 must match torch tightly on real preprocessed phantom clips;
int8 within a looser tolerance; the agreement limits themselves are checked
on synthetic scores. Two int8 calibrations of the tiny X3D-S, and one plain
and one accuracy-controlled of a tiny r2d_18.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import openvino  # noqa: F401  a dependency of the package: missing is a broken install, not a skip

from angiogate.clip.input import model_input  # noqa: E402
from angiogate.config import ConfigError, load_config  # noqa: E402
from angiogate.engines import exports  # noqa: E402
from angiogate.engines.base import EngineError, split_logits  # noqa: E402
from angiogate.engines.choose import choose_engine, open_engine, precision_preference  # noqa: E402
from angiogate.engines.model import file_digest, load_checkpoint, save_checkpoint  # noqa: E402
from angiogate.engines.openvino_engine import (OpenVINOEngine, cache_folder, compile_ir,  # noqa: E402
                                               cpu_precisions, openvino_release, openvino_version)
from angiogate.engines.torch_engine import TorchEngine  # noqa: E402
from angiogate.export.agreement import check_agreement  # noqa: E402
from angiogate.export.clips import LabelledClip, clips_from_folders  # noqa: E402
from angiogate.export.int8 import fp32_operations, quantize_int8  # noqa: E402
from angiogate.export.run import ExportResult, report, run_export  # noqa: E402


def _copy_checkpoint(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copyfile(source, target)
    return target


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, workdir) -> Path:
    """The tiny checkpoint in a folder of its own: no export from another test is beside it."""
    return _copy_checkpoint(tiny_checkpoint, workdir / "model")


@pytest.fixture(scope="module")
def config(workdir):
    return load_config(model={"export_dir": str(workdir / "cache")})


@pytest.fixture(scope="module")
def labelled(phantoms) -> list[LabelledClip]:
    folder, _ = phantoms
    return clips_from_folders([folder])


@pytest.fixture(scope="module")
def fp32_export(checkpoint, config) -> exports.FoundExport:
    return exports.ensure_fp32(checkpoint, config.model.export_folder)


@pytest.fixture(scope="module")
def model_inputs(checkpoint, labelled, config) -> np.ndarray:
    _, info = load_checkpoint(checkpoint)
    return np.stack([model_input(clip.path, info, config) for clip in labelled])


@pytest.fixture(scope="module")
def int8_export(checkpoint, fp32_export, labelled, workdir) -> ExportResult:
    # An untrained model's scores are ties within int8's noise: its AUC means nothing, so the
    # limits are opened here; the limits are checked on synthetic scores below.
    loose = load_config(model={"export_dir": str(workdir / "cache"), "agreement_max_auc_difference": 1.0,
                               "agreement_min_identical_decisions": 0.0})
    return run_export(checkpoint, "int8", loose, calibration=labelled[:4], evaluation=labelled)


# ------------------------------------------------------------------ numbers

def test_split_logits_is_a_softmax_per_head():
    logits = np.array([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], [2.0, -2.0, 5.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    prediction = split_logits(logits, 5)
    assert prediction.unsatisfactory_probability == pytest.approx([0.5, 1 / (1 + np.exp(4))], rel=1e-5)
    assert prediction.reason_probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert prediction.reason_probabilities[0] == pytest.approx([0.2] * 5)


def test_openvino_fp32_matches_torch_on_phantom_clips(checkpoint, fp32_export, model_inputs):
    torch_engine = TorchEngine(checkpoint, device="cpu")
    engine = OpenVINOEngine(fp32_export.xml, fp32_export.info, precision="fp32",
                            checkpoint_version=f"{torch_engine.info.version}+{torch_engine.digest[:12]}")
    ours, theirs = engine.predict(model_inputs), torch_engine.predict(model_inputs)
    assert len(ours.unsatisfactory_probability) == len(model_inputs)
    np.testing.assert_allclose(ours.unsatisfactory_probability, theirs.unsatisfactory_probability, atol=1e-5)
    np.testing.assert_allclose(ours.reason_probabilities, theirs.reason_probabilities, atol=1e-5)
    # The batch dimension is dynamic: one clip alone scores as it does in a batch.
    alone = engine.predict(model_inputs[1:2]).unsatisfactory_probability[0]
    assert alone == pytest.approx(ours.unsatisfactory_probability[1], abs=1e-6)


def test_versions_name_checkpoint_engine_and_precision(checkpoint, fp32_export):
    digest = file_digest(checkpoint)[:12]
    assert TorchEngine(checkpoint, device="cpu").version == f"x3d_s-untrained-test+{digest}/torch-cpu/fp32"
    engine = OpenVINOEngine(fp32_export.xml, fp32_export.info, precision="fp32",
                            checkpoint_version=f"x3d_s-untrained-test+{digest}")
    assert engine.version == f"x3d_s-untrained-test+{digest}/openvino-{openvino_version()}/fp32"
    assert engine.name == "openvino-cpu-fp32"


def test_fp32_export_sits_beside_the_checkpoint_keyed_by_its_digest(checkpoint, fp32_export):
    digest = file_digest(checkpoint)
    assert fp32_export.xml == checkpoint.parent / "tiny.openvino" / f"{digest[:12]}-fp32.xml"
    sidecar = json.loads((fp32_export.xml.parent / f"{digest[:12]}-fp32.json").read_text())
    assert sidecar["checkpoint_sha256"] == digest and sidecar["passed"]
    assert sidecar["self_check"]["max_probability_difference"] <= exports.SELF_CHECK_TOLERANCE
    assert sidecar["openvino"] == openvino_version()
    # Found again without converting: the same files.
    assert exports.ensure_fp32(checkpoint, None).xml == fp32_export.xml


def test_int8_export_is_installed_with_its_figures_and_stays_close_to_torch(checkpoint, int8_export):
    digest = file_digest(checkpoint)
    assert int8_export.installed
    assert int8_export.xml.name == f"{digest[:12]}-int8.xml"
    sidecar = json.loads(int8_export.sidecar_path.read_text())
    assert sidecar["precision"] == "int8" and sidecar["openvino_release"] == openvino_release()
    assert sidecar["calibration_clips"]["used"] == 4
    figures = sidecar["agreement"]
    assert figures["clips"] == int8_export.agreement.clips > 0
    assert {"auc_torch", "auc_export", "auc_difference", "identical_decisions", "flipped"} <= set(figures)
    # Looser than fp32, but close: the quantised network computes the same function.
    assert figures["max_probability_difference"] < 0.02
    assert "int8" in report(int8_export) and "PASSED" in report(int8_export)


def test_int8_records_how_many_operations_stayed_fp32(int8_export):
    left = json.loads(int8_export.sidecar_path.read_text())["fp32_operations"]
    assert 0 <= left["left"] < left["of"]  # most weighted operations are quantised
    assert f"{left['left']} of {left['of']} weighted operations kept in fp32" in report(int8_export)


def test_int8_accuracy_control_keeps_operations_in_fp32_until_its_limit_holds(labelled, workdir):
    """On an untrained r2d_18 at 8x32x32: NNCF ranks each of its 32 quantised
    operations (X3D-S has over a hundred, minutes of ranking), so the check stays short.

    What NNCF keeps in fp32 is a quantiser, and the one that moves the scores most need
    not sit on a weighted operation. On today's phantoms (the 8 calibration clips are 8
    unsatisfactory kinds; the ventriculogram among the 4 validation ones has an input mean
    of 0.02 against 0.35-0.66 for the others) the untrained network's logits spread wide,
    so the quantiser on its last linear layer's output, before the ReduceMean over frames,
    moves P(unsatisfactory) most: reverting it alone met the limit (0.0012 against 0.0022)
    and no weighted operation stayed fp32. So the test counts quantisers, every one NNCF
    can keep in fp32, and checks that none came back on a weighted operation."""
    import openvino as ov
    import torch

    from angiogate.engines.model import ModelInfo, build_network

    torch.manual_seed(0)
    info = ModelInfo(arch="r2d_18", num_frames=8, crop_size=32, mean=0.45, std=0.225, threshold=0.5,
                     version="r2d_18-untrained-test")
    checkpoint = save_checkpoint(workdir / "r2d" / "r2d.pt", build_network(
        "r2d_18", num_frames=8, crop_size=32, num_outputs=info.num_outputs), info)
    config = load_config(model={"export_dir": str(workdir / "cache")})
    fp32_xml = exports.ensure_fp32(checkpoint, None).xml
    torch_engine = TorchEngine(checkpoint, device="cpu")
    calibration = labelled[:8]
    validation = np.stack([model_input(c.path, info, config) for c in calibration[4:]])  # the last half
    reference = torch_engine.predict(validation).unsatisfactory_probability

    def mean_difference(model) -> float:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        logits = np.concatenate([compiled(clip[None])[compiled.output(0)] for clip in validation])
        return float(np.abs(split_logits(logits, len(info.reason_classes)).unsatisfactory_probability
                            - reference).mean())

    def quantisers(model) -> int:  # NNCF's in-memory quantisers, on weights and on activations alike
        return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())

    read = lambda: ov.Core().read_model(str(fp32_xml))  # noqa: E731
    plain = quantize_int8(read(), calibration, info, config)
    plain_difference = mean_difference(plain)
    assert plain_difference > 0  # int8 moved the scores: there is something to control
    limit = plain_difference / 2
    controlled = quantize_int8(read(), calibration, info, config, max_mean_difference=limit,
                               reference=lambda batch: torch_engine.predict(batch).unsatisfactory_probability)
    assert mean_difference(controlled) <= limit
    assert quantisers(controlled) < quantisers(plain)  # operations kept in fp32 to meet the limit
    assert fp32_operations(controlled)[0] >= fp32_operations(plain)[0]  # and none quantised anew
    with pytest.raises(exports.ExportError, match="reference"):
        quantize_int8(read(), calibration, info, config, max_mean_difference=limit)


def test_int8_bias_correction_follows_the_config(labelled, workdir, int8_export):
    """`model.int8_bias_correction: none` leaves every bias of the fp32 IR as it was (on the
    bundled X3D-S NNCF's correction, fitted to the calibration clips, moved other clips' scores
    most: docs/model_comparison.md, "int8 without bias correction"); `fast`, NNCF's default,
    shifts some. The tiny X3D-S gets batch-norm statistics of its own first: untrained, its
    folded biases are all zero and OpenVINO drops them."""
    import openvino as ov
    import torch

    from angiogate.engines.model import ModelInfo, build_network

    def biases(model) -> dict[str, np.ndarray]:  # the constant operand of each Add after a weighted op
        found = {}
        for op in model.get_ordered_ops():
            if op.get_type_name() != "Add":
                continue
            left, right = (op.input_value(i).get_node() for i in range(2))
            if right.get_type_name() == "Constant" and left.get_type_name() in (
                    "Convolution", "GroupConvolution", "MatMul"):
                found[op.get_friendly_name()] = right.get_data().copy()
        return found

    torch.manual_seed(0)
    info = ModelInfo(arch="x3d_s", num_frames=8, crop_size=64, mean=0.45, std=0.225, threshold=0.5,
                     version="x3d_s-biased-test")
    network = build_network("x3d_s", num_frames=8, crop_size=64, num_outputs=info.num_outputs)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
    checkpoint = save_checkpoint(workdir / "biased" / "biased.pt", network, info)
    fp32_xml = exports.ensure_fp32(checkpoint, None).xml
    read = lambda: ov.Core().read_model(str(fp32_xml))  # noqa: E731
    original = biases(read())
    assert original
    calibration = labelled[:4]
    untouched = biases(quantize_int8(read(), calibration, info, load_config(model={"int8_bias_correction": "none"})))
    corrected = biases(quantize_int8(read(), calibration, info, load_config(model={"int8_bias_correction": "fast"})))
    assert untouched.keys() == original.keys() == corrected.keys()
    assert all(np.array_equal(untouched[name], original[name]) for name in original)
    assert any(not np.array_equal(corrected[name], original[name]) for name in original)
    assert json.loads(int8_export.sidecar_path.read_text())["int8_bias_correction"] == "none"


def test_bf16_runs_only_where_the_cpu_has_it(checkpoint, fp32_export, labelled, model_inputs, config):
    if "bf16" in cpu_precisions():
        engine = OpenVINOEngine(fp32_export.xml, fp32_export.info, precision="bf16", checkpoint_version="t")
        theirs = TorchEngine(checkpoint, device="cpu").predict(model_inputs).unsatisfactory_probability
        np.testing.assert_allclose(engine.predict(model_inputs).unsatisfactory_probability, theirs, atol=0.02)
    else:
        # OpenVINO would quietly compute in f32 and the verdict rows would say bf16: refused instead.
        with pytest.raises(RuntimeError, match="cannot run bf16"):
            compile_ir(fp32_export.xml, "bf16")
        with pytest.raises(exports.ExportError, match="cannot run bf16"):
            run_export(checkpoint, "bf16", config, evaluation=labelled)


# ------------------------------------------------------------------ the agreement limits

LIMITS = dict(max_auc_difference=0.005, min_identical_decisions=0.99)


def test_agreement_passes_when_scores_barely_move():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 400)
    torch_scores = np.clip(0.3 * targets + rng.uniform(0, 0.7, 400), 0, 1)
    agreement = check_agreement(targets, torch_scores, torch_scores + 1e-6, 0.5, **LIMITS)
    assert agreement.passed and agreement.flipped == 0 and agreement.auc_difference < 1e-3


def test_agreement_fails_naming_by_how_much():
    targets = np.array([0] * 50 + [1] * 50)
    torch_scores = np.linspace(0.0, 1.0, 100)
    flipped = torch_scores.copy()
    flipped[45:55] = 1.0 - flipped[45:55]  # ten clips cross the threshold
    agreement = check_agreement(targets, torch_scores, flipped, 0.5, **LIMITS)
    assert not agreement.passed
    assert agreement.flipped == 10 and agreement.identical_decisions == pytest.approx(0.9)
    text = " ".join(agreement.failures)
    assert "10 of 100 clips flipped" in text and "9.00% below the required 99.00%" in text
    assert "exceeds 0.0050 by" in text


def test_agreement_needs_both_labels():
    agreement = check_agreement([1, 1, 1], [0.2, 0.6, 0.7], [0.2, 0.6, 0.7], 0.5, **LIMITS)
    assert not agreement.passed and "both satisfactory and unsatisfactory" in agreement.failures[0]


# ------------------------------------------------------------------ versioning

def test_int8_leaves_the_configured_operation_types_in_fp32(checkpoint, fp32_export, labelled, int8_export):
    """`model.int8_fp32_types` (default Multiply, Add, AvgPool: in X3D-S the squeeze-excitation
    scaling, the residual adds and the head's pooling) get no quantiser in front of them, which
    halved int8's error on the bundled model (docs/model_comparison.md, "int8 with fp32 adds");
    with [] NNCF quantises their inputs as it does by default."""
    import openvino as ov

    def quantised_inputs(model) -> dict[str, int]:  # operation type -> inputs fed by a FakeQuantize
        found: dict[str, int] = {}
        for op in model.get_ordered_ops():
            fed = sum(op.input_value(i).get_node().get_type_name() == "FakeQuantize"
                      for i in range(op.get_input_size()))
            if fed:
                found[op.get_type_name()] = found.get(op.get_type_name(), 0) + fed
        return found

    _, info = load_checkpoint(checkpoint)
    read = lambda: ov.Core().read_model(str(fp32_export.xml))  # noqa: E731
    default = load_config()
    assert default.model.int8_fp32_types == ["Multiply", "Add", "AvgPool"]
    kept = quantised_inputs(quantize_int8(read(), labelled[:4], info, default))
    plain = quantised_inputs(quantize_int8(read(), labelled[:4], info, load_config(model={"int8_fp32_types": []})))
    assert all(plain.get(kind, 0) > 0 for kind in ("Multiply", "Add", "AvgPool"))  # NNCF's default quantises them
    assert not any(kept.get(kind, 0) for kind in ("Multiply", "Add", "AvgPool"))
    assert kept.get("Convolution", 0) > 0  # the convolutions are still int8
    assert json.loads(int8_export.sidecar_path.read_text())["int8_fp32_types"] == ["Multiply", "Add", "AvgPool"]
    assert "inputs of Multiply, Add, AvgPool left in fp32" in report(int8_export)


def test_other_checkpoint_bytes_get_a_new_key_and_never_an_old_export(checkpoint, fp32_export, int8_export,
                                                                      workdir):
    network, info = load_checkpoint(checkpoint)
    info.version = "x3d_s-untrained-test-retrained"
    changed = save_checkpoint(workdir / "changed" / "tiny.pt", network, info)
    # Same name, same folder layout, the old exports copied beside it: still not its exports.
    shutil.copytree(fp32_export.xml.parent, exports.beside(changed))
    new_digest, old_digest = file_digest(changed), file_digest(checkpoint)
    assert new_digest != old_digest
    assert exports.ir_stem(new_digest, "fp32") != exports.ir_stem(old_digest, "fp32")
    assert exports.find_exports(changed, None) == {}
    # A sidecar renamed to the new key still names the old checkpoint: refused.
    folder = exports.beside(changed)
    shutil.copyfile(folder / exports.sidecar_name(old_digest, "int8"), folder / exports.sidecar_name(new_digest, "int8"))
    found = exports.find_exports(changed, None)["int8"]
    assert not found.passed and "another checkpoint" in found.problem


def test_an_export_whose_files_changed_is_not_used(checkpoint, fp32_export, workdir):
    copy = _copy_checkpoint(checkpoint, workdir / "tampered")
    exports.copy_exports(checkpoint, copy, None)
    folder = exports.beside(copy)
    bin_file = folder / f"{file_digest(copy)[:12]}-fp32.bin"
    data = bytearray(bin_file.read_bytes())
    data[-1] ^= 0xFF
    bin_file.write_bytes(bytes(data))
    found = exports.find_exports(copy, None)["fp32"]
    assert not found.passed and "do not match" in found.problem


@pytest.mark.parametrize("measured, named", [
    ({"openvino_release": "2024.6", "openvino": "2024.6.0"}, "OpenVINO 2024.6.0"),
    ({"cpu_isa": "avx512f amx_int8"}, "[avx512f amx_int8]"),
], ids=["other-openvino-release", "other-cpu"])
def test_int8_figures_measured_elsewhere_are_not_trusted(checkpoint, int8_export, tmp_path, measured, named):
    copy = _copy_checkpoint(checkpoint, tmp_path)
    exports.copy_exports(checkpoint, copy, None)
    sidecar_path = exports.beside(copy) / exports.sidecar_name(file_digest(copy), "int8")
    sidecar_path.write_text(json.dumps(json.loads(sidecar_path.read_text()) | measured))
    found = exports.find_exports(copy, None)
    assert found["fp32"].passed and not found["int8"].passed
    assert named in found["int8"].problem
    assert open_engine(copy).version.endswith("/fp32")  # auto falls back to fp32


# ------------------------------------------------------------------ choosing

def _choose(**facts):
    given = dict(engine="auto", precision="auto", device="auto", cuda_available=False, openvino_available=True,
                 cpu_precisions={"fp32", "int8"}, checked=set())
    return choose_engine(**(given | facts))


def test_auto_prefers_cuda_then_openvino_then_torch_cpu():
    assert (_choose(cuda_available=True).engine, _choose(cuda_available=True).device) == ("torch", "cuda")
    assert _choose(cuda_available=True, device="cpu").engine == "openvino"
    assert (_choose().engine, _choose().precision) == ("openvino", "fp32")
    no_openvino = _choose(openvino_available=False)
    assert (no_openvino.engine, no_openvino.device) == ("torch", "cpu")
    assert "not installed" in no_openvino.reason


def test_auto_precision_is_the_fastest_that_passed_and_the_cpu_runs():
    every = {"fp32", "bf16", "int8"}
    assert _choose(checked={"fp32", "int8", "bf16"}, cpu_precisions=every).precision == "int8"
    assert _choose(checked={"bf16"}, cpu_precisions=every).precision == "bf16"
    assert _choose(checked={"bf16"}, cpu_precisions={"fp32", "int8"}).precision == "fp32"  # no bf16 units
    assert _choose(checked=set(), cpu_precisions=every).precision == "fp32"
    assert "int8 is the fastest precision whose agreement check passed" in _choose(checked={"int8"}).reason


def test_explicit_choices_that_cannot_be_honoured_are_errors():
    with pytest.raises(EngineError, match="angiogate export"):
        _choose(precision="int8")  # no passed int8 export
    with pytest.raises(EngineError, match="no bf16 support"):
        _choose(precision="bf16", checked={"bf16"})
    with pytest.raises(EngineError, match="not installed"):
        _choose(engine="openvino", openvino_available=False)
    with pytest.raises(EngineError, match="fp32 only"):
        _choose(engine="torch", precision="int8")
    assert _choose(engine="torch").engine == "torch"
    assert _choose(precision="int8", checked={"int8"}).precision == "int8"


@pytest.mark.parametrize("flags, first", [
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "bf16"),            # the EPYC: bf16 0.66x, int8 0.80x fp32
    ({"avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8"}, "int8"),   # a Xeon with AMX int8
    ({"avx2", "avx512f", "avx512_vnni"}, "int8"),                           # VNNI without bf16
    ({"avx2"}, "int8"),
])
def test_auto_serves_bf16_before_int8_where_bf16_is_native_and_int8_has_no_amx(flags, first):
    every = {"fp32", "bf16", "int8"}
    preference = precision_preference(flags)
    assert _choose(checked=every, cpu_precisions=every, preference=preference).precision == first
    # Whichever comes first, a passed int8 serves where bf16 has not passed (or the CPU has none).
    assert _choose(checked={"fp32", "int8"}, cpu_precisions=every, preference=preference).precision == "int8"
    assert _choose(checked=every, cpu_precisions={"fp32", "int8"}, preference=preference).precision == "int8"


def test_open_engine_serves_what_was_chosen(checkpoint, fp32_export, int8_export, workdir):
    assert open_engine(checkpoint, engine="torch").name == "torch-cpu"
    assert open_engine(checkpoint, precision="fp32").version.endswith(f"/openvino-{openvino_version()}/fp32")
    assert open_engine(checkpoint).version.endswith("/int8")  # auto: the int8 export passed
    bare = _copy_checkpoint(checkpoint, workdir / "bare")
    with pytest.raises(EngineError, match="--precision int8"):
        open_engine(bare, precision="int8")


def test_compiled_blobs_are_cached_per_ir_bytes_and_reused(checkpoint, fp32_export, workdir, model_inputs):
    """A second process loads the compiled blob; a re-made IR under the same name gets its own folder."""
    cache_root = workdir / "compile-cache"
    digests = fp32_export.sidecar["ir_sha256"]
    folder = cache_folder(cache_root, digests)
    assert folder is not None and folder.parent == cache_root / "compiled"
    assert cache_folder(cache_root, {**digests, "bin": "0" * 64}) != folder
    assert cache_folder(None, digests) is None and cache_folder(cache_root, None) is None

    first = compile_ir(fp32_export.xml, "fp32", cache_dir=folder)
    blobs = sorted(folder.glob("*.blob"))
    assert blobs, "compiling with a cache folder left no compiled blob in it"
    stamp = blobs[0].stat().st_mtime_ns
    again = compile_ir(fp32_export.xml, "fp32", cache_dir=folder)
    assert sorted(folder.glob("*.blob")) == blobs and blobs[0].stat().st_mtime_ns == stamp  # loaded, not rewritten
    batch = model_inputs[:2].astype(np.float32)
    np.testing.assert_allclose(again.create_infer_request().infer({0: batch})[again.output(0)],
                               first.create_infer_request().infer({0: batch})[first.output(0)], atol=1e-5)

    served_root = workdir / "compile-cache-served"
    served = open_engine(checkpoint, precision="fp32", export_dir=served_root)
    assert served.precision == "fp32" and list(cache_folder(served_root, digests).glob("*.blob"))


def test_an_unwritable_cache_folder_only_costs_the_cache(fp32_export, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    compiled = compile_ir(fp32_export.xml, "fp32", cache_dir=blocker / "compiled")
    assert compiled.get_property("INFERENCE_PRECISION_HINT") is not None


# ------------------------------------------------------------------ config

@pytest.mark.parametrize("model, key", [
    ({"engine": "onnx"}, "'model.engine'"),
    ({"precision": "int4"}, "'model.precision'"),
    ({"performance_hint": "fast"}, "'model.performance_hint'"),
    ({"engine": "torch", "precision": "int8"}, "model.precision int8 needs model.engine openvino or auto"),
    ({"engine": "openvino", "device": "cuda"}, "model.engine openvino runs on the CPU"),
    ({"agreement_min_identical_decisions": 1.5}, "'model.agreement_min_identical_decisions'"),
])
def test_engine_settings_are_validated_naming_the_key(model, key):
    with pytest.raises(ConfigError) as caught:
        load_config(model=model)
    assert key in str(caught.value)


def test_engine_defaults_and_export_folder(tmp_path):
    defaults = load_config()
    assert (defaults.model.engine, defaults.model.precision, defaults.model.performance_hint) == \
        ("auto", "auto", "latency")
    assert defaults.model.export_folder == defaults.model.promoted_path.parent / "openvino"
    site = tmp_path / "site.yaml"
    site.write_text("model:\n  export_dir: exports\n")
    assert load_config(site).model.export_folder == tmp_path / "exports"


# ------------------------------------------------------------------ promotion and the watcher

class _Judge:
    """What the watcher needs of the judge: the engine it swaps."""

    def __init__(self, engine):
        self.engine = engine

    @property
    def model_version(self) -> str:
        return self.engine.version if self.engine else "none (rules only)"


def test_promotion_carries_the_exports_and_the_watcher_takes_a_new_one(checkpoint, fp32_export, int8_export,
                                                                       workdir):
    import threading

    from angiogate.modelstore.promote import promote
    from angiogate.modelstore.resolve import load_engine
    from angiogate.modelstore.watch import ModelWatcher

    promoted = workdir / "served" / "current.pt"
    promote(checkpoint, promoted, workdir / "cache")
    found = exports.find_exports(promoted, None)
    assert found["fp32"].passed and found["int8"].passed
    assert found["int8"].xml.parent == exports.beside(promoted)

    # A gate serving fp32; then an int8 export is installed and the watcher switches to it.
    served = _copy_checkpoint(checkpoint, workdir / "watched")
    exports.copy_exports(checkpoint, served, None)
    int8_sidecar = exports.beside(served) / exports.sidecar_name(file_digest(served), "int8")
    kept = int8_sidecar.read_text()
    int8_sidecar.unlink()
    config = load_config(model={"path": str(served), "export_dir": str(workdir / "cache")})
    judge = _Judge(load_engine(config))
    assert judge.engine.version.endswith("/fp32")
    watcher = ModelWatcher(config, judge, threading.Event())
    assert watcher.check() is False
    assert watcher.export_missing() is None  # OpenVINO serves already
    int8_sidecar.write_text(kept)
    assert watcher.check() is True
    assert judge.engine.version.endswith("/int8")


def test_torch_serves_at_once_while_the_watcher_exports_in_the_background(checkpoint, fp32_export, workdir,
                                                                         monkeypatch):
    import threading

    from angiogate.modelstore.resolve import load_engine
    from angiogate.modelstore.watch import ModelWatcher

    served = _copy_checkpoint(checkpoint, workdir / "background")
    config = load_config(model={"path": str(served), "export_dir": str(workdir / "background-cache")})
    judge = _Judge(load_engine(config))
    assert judge.engine.name == "torch-cpu"  # no export yet: no conversion holds up the start
    made = []

    def convert_quickly(path, export_dir, threads=0):  # the conversion itself is tested above
        made.append(Path(path))
        exports.copy_exports(checkpoint, path, export_dir)

    monkeypatch.setattr(exports, "ensure_fp32", convert_quickly)
    watcher = ModelWatcher(config, judge, threading.Event())
    thread = watcher.export_missing()
    thread.join(120)
    assert made == [served]
    assert watcher.check() is True  # the new sidecar is noticed like a promotion
    assert f"/openvino-{openvino_version()}/" in judge.engine.version
    assert watcher.export_missing() is None


# ------------------------------------------------------------------ the command

def test_export_command_rejects_a_disagreeing_export_and_keeps_it_for_other_cpus(checkpoint, fp32_export, phantoms,
                                                                                workdir, monkeypatch):
    """A failed int8 check is never served on the CPU that failed it, but its IR stays with a sidecar
    saying so: another CPU (other instruction sets) re-checks it, since a check holds for its CPU only."""
    from typer.testing import CliRunner

    from angiogate.cli import app
    from angiogate.engines.base import Prediction

    folder, _ = phantoms
    copy = _copy_checkpoint(checkpoint, workdir / "rejected")
    exports.copy_exports(checkpoint, copy, None)  # fp32 is there already: no conversion
    for name in exports.beside(copy).glob("*int8*"):
        name.unlink()
    before = sorted(p.name for p in exports.beside(copy).iterdir())
    original = OpenVINOEngine.predict

    def disagreeing(self, clips):  # an export that judges every clip the other way round
        prediction = original(self, clips)
        return Prediction(1.0 - prediction.unsatisfactory_probability, prediction.reason_probabilities)

    monkeypatch.setattr(OpenVINOEngine, "predict", disagreeing)
    result = CliRunner().invoke(app, ["export", str(copy), "--precision", "int8", "--calibration", str(folder),
                                      "--calibration-clips", "3", "--evaluation", str(folder)])
    assert result.exit_code == 1, result.output
    assert "REJECTED on this CPU, never served here" in result.output
    assert "below the required 99.00%" in result.output
    after = sorted(p.name for p in exports.beside(copy).iterdir())
    key = file_digest(copy)[:12]
    assert sorted(set(after) - set(before)) == [f"{key}-int8.bin", f"{key}-int8.json", f"{key}-int8.xml"]
    sidecar_path = exports.beside(copy) / f"{key}-int8.json"
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["passed"] is False and sidecar["agreement"]["flipped"] > 0
    found = exports.find_exports(copy, workdir / "cache")["int8"]
    assert not found.passed and "did not pass" in found.problem
    assert exports.recheck_wanted({"int8": found}, ("fp32", "int8")) == []  # failed here: final here
    assert open_engine(copy, export_dir=workdir / "cache").version.endswith("/fp32")
    # The same files on a CPU with other instruction sets: not served, but re-checked there.
    sidecar_path.write_text(json.dumps(sidecar | {"cpu_isa": "avx2 avx512f avx512_vnni (another CPU)"}))
    elsewhere = exports.find_exports(copy, workdir / "cache")["int8"]
    assert not elsewhere.passed and elsewhere.measured_elsewhere and "re-checked here" in elsewhere.problem
    assert exports.recheck_wanted({"int8": elsewhere}, ("fp32", "int8")) == ["int8"]
    assert open_engine(copy, export_dir=workdir / "cache").version.endswith("/fp32")


def test_export_command_without_data_for_int8_says_what_is_missing(checkpoint):
    from typer.testing import CliRunner

    from angiogate.cli import app

    result = CliRunner().invoke(app, ["export", str(checkpoint), "--precision", "int8"])
    assert result.exit_code == 2
    assert "needs evaluation clips" in result.output
