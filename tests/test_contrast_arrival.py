"""The pixel rule `contrast_arrival` (angiogate/judge/contrast.py): did iodine arrive?

Synthetic clips at 256x256 (the measure resizes to 112 px, as a 512 px run is): a smooth
background with quantum-like noise, to which a dark vessel tree is added after frame 0, or
which only sits still or moves. Figures on real runs and phantoms: docs/contrast_arrival.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from angiogate.config import ConfigError, load_config
from angiogate.judge.contrast import RULE, contrast_arrival, contrast_arrival_rule

SIZE, FRAMES = 256, 24


def _background(shift: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return 150 + 25 * np.sin((x + shift) / 58.0) + 20 * np.cos(y / 62.0)


def _tree() -> np.ndarray:
    """Four straight vessels 4-10 px wide: about 10% of the field, as a filled coronary tree."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    mask = np.zeros((SIZE, SIZE), np.float32)
    for k, (slope, offset) in enumerate([(0.8, 20), (-0.5, 180), (0.2, 80), (1.5, -60)]):
        mask[np.abs(y - (slope * x + offset)) < 2 + k] = 1
    return mask


def synthetic_clip(kind: str, *, depth: float = 60.0, noise: float = 3.0, seed: int = 0) -> np.ndarray:
    """uint8 (FRAMES, SIZE, SIZE): `tree` (iodine fills a tree from frame 4 on, `depth` grey levels
    dark), `static` (nothing changes but noise) or `moving` (the background sways 5 px, no iodine)."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(FRAMES):
        frame = _background(5.0 * np.sin(t / 3) if kind == "moving" else 0.0)
        if kind == "tree" and t >= 4:
            frame = frame - depth * _tree() * min(1.0, (t - 3) / 4)
        frames.append(np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def _measure(clip: np.ndarray) -> float:
    return contrast_arrival(clip[0], clip[8:24])  # frame 0 against the frames a classifier would sample


def test_a_dark_tree_arriving_after_frame_0_scores_high():
    assert _measure(synthetic_clip("tree")) > 0.3


@pytest.mark.parametrize("kind", ["static", "moving"])
def test_a_clip_without_contrast_scores_low_whether_still_or_moving(kind):
    assert _measure(synthetic_clip(kind)) < 0.07


def test_fainter_iodine_scores_lower_and_the_default_threshold_sits_between():
    values = [_measure(synthetic_clip("tree", depth=d)) for d in (0, 10, 20, 60)]
    assert values == sorted(values)
    default = load_config().rules.min_contrast_arrival
    assert default == 0.08
    assert values[0] < default < values[1]


def test_the_rule_passes_at_its_threshold_and_fails_just_below():
    at = contrast_arrival_rule(0.08, 0.08)
    below = contrast_arrival_rule(0.0799, 0.08)
    assert at.rule == below.rule == RULE == "contrast_arrival"
    assert at.passed and not below.passed
    assert "0.080" in below.detail and "minimum 0.08" in below.detail  # the value and the threshold


def test_the_threshold_is_validated_and_null_disables_it():
    assert load_config(rules={"min_contrast_arrival": None}).rules.min_contrast_arrival is None
    for bad in (-0.1, 1.5, "high"):
        with pytest.raises(ConfigError, match="min_contrast_arrival"):
            load_config(rules={"min_contrast_arrival": bad})


def test_frames_resized_once_give_the_rule_and_the_model_what_resizing_twice_gave():
    """The judge resizes the sampled frames once when the model's crop size is the rule's
    (112 px, the bundled model's): the same contrast value and the same model input, bit for bit."""
    from angiogate.clip.preprocess import model_input_from_resized, resize_frames, to_model_input
    from angiogate.judge.contrast import SIZE as RULE_SIZE, contrast_arrival_resized

    clip = synthetic_clip("tree")
    first, sampled = clip[0], clip[8:24]
    resized = resize_frames(sampled, RULE_SIZE)
    assert contrast_arrival_resized(resize_frames(first[None], RULE_SIZE)[0], resized) == \
        contrast_arrival(first, sampled)
    for channels in ("grey", "grey+contrast"):
        np.testing.assert_array_equal(
            model_input_from_resized(resized, mean=0.45, std=0.225, channels=channels),
            to_model_input(sampled, size=RULE_SIZE, mean=0.45, std=0.225, channels=channels))


def test_the_judge_gives_a_112_px_model_the_input_every_other_path_makes(tmp_path):
    """Judge.prepare (one resize shared with the contrast rule) against clip.input.model_input
    (the composition training, export and the bench use) for a model at the rule's size."""
    import torch

    from angiogate.clip.input import model_input
    from angiogate.engines.model import ModelInfo, build_network, save_checkpoint
    from angiogate.engines.torch_engine import TorchEngine
    from angiogate.judge.verdict import Judge
    from angiogate.synth import generate

    torch.manual_seed(0)
    info = ModelInfo(arch="x3d_s", num_frames=8, crop_size=112, mean=0.45, std=0.225, threshold=0.5,
                     version="x3d_s-untrained-112", input_channels="grey+contrast")
    checkpoint = save_checkpoint(tmp_path / "m112.pt",
                                 build_network("x3d_s", num_frames=8, crop_size=112, num_outputs=info.num_outputs),
                                 info)
    rows = generate(tmp_path / "clips", per_kind=1, seed=3, kinds=["left_coronary"], size=128,
                    frame_rates=(15.0,), syntaxes=("jpeg-lossless",), min_frames=30, max_frames=30)
    path = tmp_path / "clips" / rows[0]["file"]
    config = load_config(None)
    assert config.rules.min_contrast_arrival is not None  # the rule runs by default
    engine = TorchEngine(checkpoint, device="cpu", threads=1)
    prepared = Judge(config, engine).prepare(path)
    assert prepared.needs_model, prepared.judgement
    np.testing.assert_array_equal(prepared.model_input, model_input(path, engine.info, config))
