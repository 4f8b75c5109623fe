"""A second opinion from physics: did iodine arrive during the clip?

A coronary angiogram is a run in which contrast flows into the vessels: the
vessels darken against the frames before the injection. A run recorded
without contrast (a catheter or device run, fluoroscopy stored as cine, the
pre-contrast frames of a run) has nothing that darkens beyond noise and
motion. The classifier learnt this from phantoms; this check measures it on
the clip itself, the same way on every system, and holds a clip in which
nothing arrived whatever the network says. It can only hold clips, never
pass one the network holds.

The measure: the clip's first frame (almost always recorded before the
injection) and the frames the classifier samples are squared, resized and
contrast-stretched together (1st..99th percentile to 0..1, as the
classifier's input is), and for each sampled frame the 99th percentile of
how much each pixel darkened against the first frame is taken; the largest
of those is the clip's `contrast_arrival` (0: nothing darkened; about 0.2 to
0.9 for filled coronaries). The 99th percentile asks that about 1% of the
field darkens, well under the area a filled coronary tree covers (5-15% of
a 512x512 field at peak).

Calibration (2026-12-02, at 112 px; docs/realism.md): 500 satisfactory
phantoms of the realistic renderer lowest 0.102 (1st percentile 0.14); the
real right coronary run in shared/samples 0.405; the real catheter run
0.050; phantoms of a run's first frames looped to its length 0.00-0.03.
The default threshold, `rules.min_contrast_arrival: 0.08`, sits between.
"""

from __future__ import annotations

import numpy as np

from angiogate.clip.preprocess import normalise_intensity, resize_frames
from angiogate.judge.rules import RuleResult

RULE = "contrast_arrival"
SIZE = 112  # pixels: enough for vessels 1-3 px wide after resizing, cheap to compute


def contrast_arrival(first: np.ndarray, sampled: np.ndarray) -> float:
    """How much the clip darkened against its first frame (see the module docstring).

    `first` is frame 0 (rows, columns); `sampled` the classifier's frames
    (T, rows, columns), as decoded."""
    return contrast_arrival_resized(resize_frames(first[None], SIZE)[0], resize_frames(sampled, SIZE))


def contrast_arrival_resized(first: np.ndarray, sampled: np.ndarray) -> float:
    """`contrast_arrival` of frames already through `resize_frames(..., SIZE)`."""
    # grey_clip of frame 0 and the sampled frames together
    clip = normalise_intensity(np.concatenate([first[None], sampled]))
    darkening = clip[0][None] - clip[1:]
    return float(np.percentile(darkening.reshape(len(darkening), -1), 99, axis=1).max())


def contrast_arrival_rule(value: float, minimum: float) -> RuleResult:
    """The pixel rule `contrast_arrival`: passes when `value` reaches `minimum`
    (`rules.min_contrast_arrival`); its detail carries both."""
    passed = value >= minimum
    return RuleResult(RULE, passed, f"{value:.3f} darkening against the first frame "
                                    f"({'at or above' if passed else 'below'} minimum {minimum:g})")
