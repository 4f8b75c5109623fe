"""Training and evaluation on CUDA or the CPU (angiogate/training/device.py): the choice, and one
code path. No GPU is here: the choice is tested with CUDA's presence injected, and a CPU run's
checkpoints are checked in tests/test_train.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from angiogate.engines.cpu import native_bf16
from angiogate.training.device import autocast_dtype, grad_scaler, mixed_precision, training_device


@pytest.mark.parametrize("config_device, cuda_available, expected", [
    ("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cpu", False, "cpu"),
    ("cuda", True, "cuda"),
])
def test_the_device_follows_model_device_and_the_machine(config_device, cuda_available, expected):
    assert training_device(config_device, cuda_available) == expected


def test_cuda_without_a_gpu_is_an_error_naming_the_key_not_a_silent_cpu_run():
    with pytest.raises(ValueError, match=r"model\.device.*cuda.*no CUDA device"):
        training_device("cuda", False)
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        training_device("tpu", True)


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the autocast object is only inspected
def test_a_cpu_without_native_bf16_runs_fp32_and_cuda_asks_for_mixed_precision():
    with mixed_precision("cpu", cpu_bf16=False):
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not grad_scaler("cpu").is_enabled()
    cuda = mixed_precision("cuda")
    assert isinstance(cuda, torch.autocast) and cuda.device == "cuda" and cuda.fast_dtype == torch.float16


def test_a_cpu_with_native_bf16_trains_in_bf16_autocast_and_scores_in_fp32():
    with mixed_precision("cpu", cpu_bf16=True):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert autocast_dtype("cpu", cpu_bf16=True) == torch.bfloat16
    assert autocast_dtype("cpu", training=False, cpu_bf16=True) is None  # the threshold sees fp32 scores
    assert autocast_dtype("cuda", training=False) == torch.float16
    assert not grad_scaler("cpu").is_enabled()  # bf16 has fp32's range: nothing to scale


@pytest.mark.parametrize("flags, x86", [
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, True),   # an EPYC with AVX-512 bf16
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True),         # a Xeon with AMX
    ({"avx2", "avx512f", "avx512_vnni"}, False),                 # AVX-512 without bf16: emulated, slower
    ({"avx2"}, False), (set(), False),
])
def test_native_bf16_is_read_from_the_cpu_flags(flags, x86, monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert native_bf16(frozenset(flags)) is x86
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert native_bf16(frozenset(flags)) is False


def test_a_disabled_scaler_is_a_plain_backward_and_step():
    """The CPU goes through the scaler's calls too (one code path): they must change nothing."""
    torch.manual_seed(0)
    weights = [torch.nn.Linear(3, 1) for _ in range(2)]
    weights[1].load_state_dict(weights[0].state_dict())
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    plain_opt = torch.optim.SGD(weights[0].parameters(), lr=0.1)
    torch.nn.functional.mse_loss(weights[0](x), y).backward()
    plain_opt.step()
    scaled_opt, scaler = torch.optim.SGD(weights[1].parameters(), lr=0.1), grad_scaler("cpu")
    with mixed_precision("cpu", cpu_bf16=False):
        loss = torch.nn.functional.mse_loss(weights[1](x), y)
    scaler.scale(loss).backward()
    scaler.step(scaled_opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(weights[0].parameters(), weights[1].parameters()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: cuda is a valid choice here")
@pytest.mark.parametrize("command", ["retrain", "evaluate"])
def test_the_commands_take_device_from_the_config_or_the_option(command, tmp_path):
    """`--device` defaults to the config's model.device: cuda from either fails here, before work."""
    site = tmp_path / "site.yaml"
    site.write_text("model: {device: cuda}\n")
    folder = tmp_path / "none"
    folder.mkdir()
    (folder / "labels.csv").write_text("file,label\n")
    args = {"retrain": ["retrain", "--data", str(folder), "--out-dir", str(tmp_path / "run")],
            "evaluate": ["evaluate", str(folder), "--checkpoint", str(tmp_path / "x.pt")]}[command]
    cli = [sys.executable, "-m", "angiogate.cli"]
    for extra in (["--config", str(site)], ["--device", "cuda"]):
        run = subprocess.run(cli + args + extra, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode != 0 and "no CUDA device" in run.stderr, run.stderr[-2000:]
