"""Training fast and fine-tuning on a few dozen labels (issue 16 point 4, issue 13 point 6).

The fast depthwise backward gives PyTorch's own numbers; a tiny labelled set
gets a split with a floor of held-out clips per label, or says it cannot;
`--init-from` on a few dozen clips picks the fine-tuning recipe, and what the
caller sets explicitly wins. No timings here: speed is `angiogate bench --training`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from angiogate.engines.model import build_network
from angiogate.training.data import ClipRecord, held_out_floor_met, patient_split
from angiogate.training.depthwise import FastDepthwiseConv3d, use_fast_depthwise
from angiogate.training.fast_path import use_fast_path
from angiogate.training.loop import TrainConfig, freeze_blocks, set_train_mode
from angiogate.training.recipe import FINE_TUNE, FULL, SMALL_SET, resolve_recipe


@pytest.mark.parametrize("kernel,stride,padding,bias,size", [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), False, (5, 9, 9)),
    ((3, 3, 3), (1, 2, 2), (1, 1, 1), False, (5, 9, 8)),   # odd and even sizes under stride 2
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), True, (6, 7, 10)),
    ((5, 1, 1), (1, 1, 1), (2, 0, 0), False, (7, 6, 6)),   # X3D's stem
    ((3, 3, 3), (1, 3, 3), (0, 1, 0), False, (4, 11, 10)),  # stride = kernel; a tail no window reaches
    ((3, 2, 2), (1, 3, 3), (1, 0, 1), True, (4, 8, 9)),     # stride > kernel: phases no tap reaches
])
def test_fast_depthwise_conv_matches_pytorch_outputs_and_gradients(kernel, stride, padding, bias, size):
    torch.manual_seed(0)
    channels = 6
    reference = nn.Conv3d(channels, channels, kernel, stride, padding, groups=channels, bias=bias)
    fast = nn.Conv3d(channels, channels, kernel, stride, padding, groups=channels, bias=bias)
    fast.load_state_dict(reference.state_dict())
    assert use_fast_depthwise(fast) == 1 and isinstance(fast, FastDepthwiseConv3d)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        x = torch.randn(3, channels, *size).to(memory_format=layout)
        results = []
        for module in (reference, fast):
            module.zero_grad()
            xi = x.clone().requires_grad_()
            out = module(xi)
            out.backward(torch.sin(torch.arange(out.numel(), dtype=torch.float32)).view_as(out))
            results.append((out.detach(), xi.grad, module.weight.grad) + ((module.bias.grad,) if bias else ()))
        for ref, new in zip(*results):
            assert ref.shape == new.shape
            assert float((ref - new).abs().max()) < 1e-4


def test_fast_depthwise_trains_under_cpu_bf16_autocast_as_pytorch_does():
    """Mixed precision on a CPU with native bf16: the backward runs under the forward's autocast
    state (bf16 in, the weight's fp32 gradient out), near PyTorch's own bf16 gradients."""
    torch.manual_seed(3)
    channels = 8
    reference = nn.Conv3d(channels, channels, 3, (1, 2, 2), 1, groups=channels, bias=False)
    fast = nn.Conv3d(channels, channels, 3, (1, 2, 2), 1, groups=channels, bias=False)
    fast.load_state_dict(reference.state_dict())
    use_fast_depthwise(fast)
    x = torch.randn(2, channels, 4, 10, 10).to(memory_format=torch.channels_last_3d)
    results = []
    for module in (reference, fast):
        module.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(xi)
        assert out.dtype == torch.bfloat16
        out.float().pow(2).sum().backward()
        assert module.weight.grad.dtype == torch.float32 and xi.grad.dtype == torch.float32
        results.append((out.float(), xi.grad, module.weight.grad))
    for ref, new in zip(*results):
        scale = float(ref.abs().max())
        assert float((ref - new).abs().max()) < 0.03 * scale


def test_x3d_with_the_fast_path_trains_as_pytorch_does():
    """A whole X3D-S step: the same logits and the same gradient for every parameter."""
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_network("x3d_s", num_frames=4, crop_size=32, num_outputs=7)
        fast = build_network("x3d_s", num_frames=4, crop_size=32, num_outputs=7)
    fast.load_state_dict(reference.state_dict())
    # the stem's 5x1x1 and one 3x3x3 per bottleneck; one Swish per bottleneck
    assert use_fast_path(fast) == {"depthwise_conv3d": 27, "swish": 26}
    assert fast.state_dict().keys() == reference.state_dict().keys()
    x, y = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 1])
    grads = []
    for network in (reference, fast):
        network.train()
        torch.manual_seed(2)  # the same dropout mask in the head
        logits = network(x.to(memory_format=torch.channels_last_3d))
        nn.functional.cross_entropy(logits[:, :2], y).backward()
        grads.append((logits.detach(), {n: p.grad for n, p in network.named_parameters()}))
    assert float((grads[0][0] - grads[1][0]).abs().max()) < 1e-4
    for name, grad in grads[0][1].items():
        assert float((grad - grads[1][1][name]).abs().max()) < 1e-4, name


def _records(patients: int, per_patient=("satisfactory", "unsatisfactory")) -> list[ClipRecord]:
    return [ClipRecord(Path(f"/x/P{p}/{i}.dcm"), label, None, f"P{p:02d}", f"1.2.{p}.{i}")
            for p in range(patients) for i, label in enumerate(per_patient)]


def test_split_of_a_few_dozen_clips_holds_out_a_floor_of_each_label():
    records = _records(12)  # 24 clips: 12 patients, one good and one bad run each
    plain = patient_split(records, FINE_TUNE["split"], seed=0)
    assert not held_out_floor_met(plain[1], plain[2], 3)  # the split alone leaves 2 of a label
    train, validation, test = patient_split(records, FINE_TUNE["split"], seed=0, min_held_out=3)
    for part in (validation, test):
        assert sum(r.target for r in part) >= 3 and sum(1 - r.target for r in part) >= 3
    assert {r.target for r in train} == {0, 1}
    patients = [{r.patient_id for r in part} for part in (train, validation, test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert len(train) + len(validation) + len(test) == 24
    assert held_out_floor_met(validation, test, 3)


def test_a_set_too_small_for_the_floor_says_so():
    records = _records(4)  # 8 clips cannot hold out 3 of each label twice and still train
    train, validation, test = patient_split(records, FINE_TUNE["split"], seed=0, min_held_out=3)
    assert not held_out_floor_met(validation, test, 3)
    assert {r.target for r in train} == {0, 1}  # training keeps both labels whatever happens


def test_init_from_on_a_few_dozen_clips_picks_the_fine_tuning_recipe():
    tuned = resolve_recipe(TrainConfig(init_from="start.pt"), clips=24)
    assert tuned.recipe == "fine-tune"
    assert {key: getattr(tuned, key) for key in FINE_TUNE} == FINE_TUNE
    assert tuned.lr <= FULL["lr"] and tuned.epochs < FULL["epochs"] and tuned.batch_size < FULL["batch_size"]
    many = resolve_recipe(TrainConfig(init_from="start.pt"), clips=SMALL_SET)
    scratch = resolve_recipe(TrainConfig(), clips=24)
    for config in (many, scratch):
        assert config.recipe == "full" and {key: getattr(config, key) for key in FULL} == FULL
    other_arch = resolve_recipe(TrainConfig(init_from="start.pt", arch="r3d_18"), clips=24)
    assert other_arch.frozen_blocks == 0  # only X3D's blocks are known to be stem-then-stages


def test_explicit_settings_win_over_the_fine_tuning_defaults():
    given = TrainConfig(init_from="start.pt", epochs=2, lr=1e-3, batch_size=8, patience=7, frozen_blocks=0,
                        freeze_batch_norm=False, min_held_out=1, split=(0.5, 0.25, 0.25))
    tuned = resolve_recipe(given, clips=24)
    assert (tuned.epochs, tuned.lr, tuned.batch_size, tuned.patience, tuned.frozen_blocks,
            tuned.freeze_batch_norm, tuned.min_held_out, tuned.split) == (2, 1e-3, 8, 7, 0, False, 1,
                                                                          (0.5, 0.25, 0.25))
    partly = resolve_recipe(TrainConfig(init_from="start.pt", epochs=3), clips=24)
    assert partly.epochs == 3 and partly.lr == FINE_TUNE["lr"]
    assert "--epochs 3" in partly.to_command() and f"--lr {FINE_TUNE['lr']:g}" in partly.to_command()


def _norms(blocks) -> list:
    return [m for block in blocks for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_frozen_blocks_get_no_gradient_and_later_batch_norm_follows_the_site():
    """The fine-tuning recipe: the stem and first stage frozen, statistics and all; the later
    stages' batch norms track the site's clips (its look moves their means and variances)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = build_network("x3d_s", num_frames=4, crop_size=32, num_outputs=7)
    config = resolve_recipe(TrainConfig(init_from="start.pt"), clips=24)
    total = sum(p.numel() for p in network.parameters())
    trainable = freeze_blocks(network, config.frozen_blocks)
    assert 0 < trainable < total
    assert not any(p.requires_grad for block in network.blocks[:2] for p in block.parameters())
    assert all(p.requires_grad for p in network.blocks[2].parameters())
    set_train_mode(network, config)
    frozen, later = _norms(network.blocks[:2]), _norms(network.blocks[2:])
    assert frozen and later and not any(m.training for m in frozen) and all(m.training for m in later)
    before = [m.running_mean.clone() for m in frozen + later]
    network(torch.randn(2, 3, 4, 32, 32) + 3.0)  # a shifted look
    after = [m.running_mean for m in frozen + later]
    assert all(torch.equal(b, a) for b, a in zip(before[:len(frozen)], after[:len(frozen)]))
    assert not any(torch.equal(b, a) for b, a in zip(before[len(frozen):], after[len(frozen):]))
    assert network.blocks[4].training  # the rest trains (dropout in the head, for one)


def test_frozen_batch_norm_when_asked_keeps_every_statistic():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = build_network("x3d_s", num_frames=4, crop_size=32, num_outputs=7)
    config = resolve_recipe(TrainConfig(init_from="start.pt", freeze_batch_norm=True), clips=24)
    freeze_blocks(network, config.frozen_blocks)
    set_train_mode(network, config)
    norms = _norms(network.blocks)
    assert norms and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    network(torch.randn(2, 3, 4, 32, 32))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))


def test_promotion_refuses_when_the_test_split_lacks_the_floor(tmp_path, phantoms, tiny_checkpoint):
    from angiogate.config import load_config
    from angiogate.engines.model import BUNDLED_MODEL
    from angiogate.export.promotion_check import compare_on_split

    folder, rows = phantoms
    good = next(r for r in rows if r["label"] == "satisfactory")
    bad = next(r for r in rows if r["label"] == "unsatisfactory")
    test = [{"path": str(folder / r["file"]), "label": r["label"]} for r in (good, bad)]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "validation": [], "test": test, "min_held_out": 3}))
    result = compare_on_split(BUNDLED_MODEL, tiny_checkpoint, split, load_config())
    assert not result.promote and "evaluation is not possible" in result.why
    split.write_text(json.dumps({"train": [], "validation": [], "test": test}))  # no floor: AUC decides
    assert "evaluation is not possible" not in compare_on_split(BUNDLED_MODEL, tiny_checkpoint, split,
                                                                load_config()).why


def test_fine_tuning_takes_the_starting_checkpoints_input_unless_told_otherwise():
    from angiogate.engines.model import ModelInfo

    start = ModelInfo(arch="x3d_s", num_frames=16, crop_size=112, mean=0.4, std=0.2, threshold=0.7, version="v",
                      input_channels="grey+contrast")
    tuned = resolve_recipe(TrainConfig(init_from="start.pt"), clips=24, start=start)
    assert (tuned.num_frames, tuned.crop_size, tuned.input_channels) == (16, 112, "grey+contrast")
    told = resolve_recipe(TrainConfig(init_from="start.pt", crop_size=160, input_channels="grey"), clips=24,
                          start=start)
    assert (told.crop_size, told.input_channels) == (160, "grey")
    scratch = resolve_recipe(TrainConfig(), clips=24)
    assert (scratch.num_frames, scratch.crop_size, scratch.input_channels) == (16, 160, "grey")
