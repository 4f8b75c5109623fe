"""Header rules: pure functions from header facts to pass/fail results.

Three questions, asked in this order by the judge:
  1. `header_problems`: is the header sane enough to decode? (an `error`)
  2. `is_cine`: is this a cine clip at all? (if not: `not_applicable`)
  3. `evaluate_rules`: does the clip pass the site's rules? (if not:
     `unsatisfactory`, and the classifier is not run)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from angiogate.config import Rules
from angiogate.dicom.header import ClipHeader


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def header_problems(header: ClipHeader, rules: Rules) -> list[str]:
    """Reasons the object cannot be decoded as an image (empty if none)."""
    problems = []
    if not header.has_pixel_data:
        problems.append("no pixel data")
        return problems
    if not header.rows or not header.columns:
        problems.append(f"missing or zero Rows/Columns ({header.rows}x{header.columns})")
    elif header.rows > rules.max_rows or header.columns > rules.max_columns:
        problems.append(
            f"absurd dimensions {header.rows}x{header.columns} (limit {rules.max_rows}x{rules.max_columns})"
        )
    if header.frames is not None and (header.frames < 1 or header.frames > rules.max_frames):
        problems.append(f"NumberOfFrames {header.frames} outside 1..{rules.max_frames}")
    if header.bits_allocated not in (8, 16):
        problems.append(f"BitsAllocated {header.bits_allocated} not supported (8 or 16)")
    if header.samples_per_pixel not in (None, 1, 3):
        problems.append(f"SamplesPerPixel {header.samples_per_pixel} not supported")
    return problems


def is_cine(header: ClipHeader, rules: Rules) -> bool:
    """A multi-frame object of one of the configured cine SOP classes."""
    return header.sop_class_uid in rules.sop_classes and (header.frames or 0) > 1


def _frame_rate(header: ClipHeader, rules: Rules) -> RuleResult:
    rate = header.frame_rate_hz
    if rate is None:
        ok = not rules.require_frame_rate
        return RuleResult("frame_rate", ok, "no timing attribute (FrameTime, FrameTimeVector, CineRate, "
                          f"RecommendedDisplayFrameRate); assumed {rules.assumed_frame_rate_hz} Hz")
    if rate < rules.min_frame_rate_hz:
        return RuleResult("frame_rate", False, f"{rate:.2f} Hz ({header.frame_rate_source}) below minimum {rules.min_frame_rate_hz} Hz")
    if rate > rules.max_frame_rate_hz:
        return RuleResult("frame_rate", False, f"{rate:.2f} Hz ({header.frame_rate_source}) above maximum {rules.max_frame_rate_hz} Hz")
    return RuleResult("frame_rate", True, f"{rate:.2f} Hz from {header.frame_rate_source}")


def _series_description(header: ClipHeader, rules: Rules) -> RuleResult:
    text = header.series_description or ""
    for pattern in rules.series_description_exclude:
        if re.search(pattern, text, re.IGNORECASE):
            return RuleResult("series_description", False, f"'{text}' matches exclude pattern {pattern!r}")
    if rules.series_description_include and not any(
        re.search(p, text, re.IGNORECASE) for p in rules.series_description_include
    ):
        return RuleResult("series_description", False, f"'{text}' matches no include pattern")
    return RuleResult("series_description", True, f"'{text}' accepted")


def evaluate_rules(header: ClipHeader, rules: Rules, *, clip_rank_in_study: int | None = None) -> list[RuleResult]:
    """Every header rule's result for a cine clip, in a fixed order.

    `clip_rank_in_study` is the 1-based position of the clip among its
    study's clips (by series and instance number), for the first-N rule.
    """
    results = []
    modality = header.modality or ""
    results.append(RuleResult("modality", modality in rules.modalities,
                              f"modality {modality or 'missing'}; allowed {', '.join(rules.modalities)}"))
    results.append(_frame_rate(header, rules))
    frames = header.frames or 0
    results.append(RuleResult("min_frames", frames >= rules.min_frames,
                              f"{frames} frames; minimum {rules.min_frames}"))
    rate = header.frame_rate_hz or rules.assumed_frame_rate_hz
    duration = frames / rate
    results.append(RuleResult("min_duration", duration >= rules.min_duration_s,
                              f"{duration:.2f} s; minimum {rules.min_duration_s} s"))
    results.append(_series_description(header, rules))
    if rules.max_clips_per_study is not None and clip_rank_in_study is not None:
        results.append(RuleResult("first_clips_of_study", clip_rank_in_study <= rules.max_clips_per_study,
                                  f"clip {clip_rank_in_study} of its study; first {rules.max_clips_per_study} judged"))
    return results
