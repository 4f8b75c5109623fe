"""Judge one stored object: header sanity, cine or not, rules, then the model.

`Judge.judge(path)` never raises for bad input: whatever is wrong with the
object becomes an `error` judgement whose reasons say what, so the caller can
record it and apply the fail-open / fail-closed policy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from angiogate.config import Config
from angiogate.judge.decode import DecodeError, decode_frames
from angiogate.judge.engine import InferenceEngine
from angiogate.judge.frames import frame_indices
from angiogate.judge.header import ClipHeader, HeaderError, read_header
from angiogate.judge.preprocess import to_model_input
from angiogate.judge.rules import RuleResult, evaluate_rules, header_problems, is_cine
from angiogate.store.schema import ERROR, NOT_APPLICABLE, SATISFACTORY, UNSATISFACTORY

log = logging.getLogger(__name__)
RULES_ONLY_VERSION = "none (rules only)"


@dataclass
class Judgement:
    decision: str
    reason_code: str | None = None
    reasons: list[str] = field(default_factory=list)
    rule_results: list[RuleResult] = field(default_factory=list)
    score: float | None = None
    threshold: float | None = None
    model_version: str | None = None
    frame_indices: list[int] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def failed_rules(self) -> list[str]:
        return [r.rule for r in self.rule_results if not r.passed]

    def as_dict(self) -> dict:
        return {
            "decision": self.decision, "reason_code": self.reason_code, "reasons": self.reasons,
            "score": self.score, "threshold": self.threshold, "model_version": self.model_version,
            "failed_rules": self.failed_rules, "rule_results": [r.as_dict() for r in self.rule_results],
            "frame_indices": self.frame_indices, "timings_ms": self.timings_ms,
        }


class Judge:
    """Applies the configured rules and the classifier (if any) to files."""

    def __init__(self, config: Config, engine: InferenceEngine | None):
        self.config = config
        self.engine = engine

    @property
    def model_version(self) -> str:
        return self.engine.version if self.engine else RULES_ONLY_VERSION

    def judge(self, path: Path, *, header: ClipHeader | None = None,
              clip_rank_in_study: int | None = None) -> Judgement:
        started = time.perf_counter()
        engine = self.engine  # one engine per clip, even if a new model is swapped in meanwhile
        version = engine.version if engine else RULES_ONLY_VERSION
        if header is None:
            try:
                header = read_header(path)
            except HeaderError as exc:
                return Judgement(ERROR, "unreadable", [str(exc)], model_version=version)
        try:
            judgement = self._judge(path, header, clip_rank_in_study, engine, version)
        except Exception as exc:  # a decoder or header quirk nobody foresaw: still a verdict
            log.exception("judging %s failed unexpectedly", path)
            judgement = Judgement(ERROR, "internal", [f"internal error while judging: {type(exc).__name__}: {exc}"],
                                  model_version=version)
        judgement.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 2)
        return judgement

    def _judge(self, path: Path, header: ClipHeader, clip_rank_in_study: int | None,
               engine: InferenceEngine | None, version: str) -> Judgement:
        rules = self.config.rules
        problems = header_problems(header, rules)
        if problems:
            return Judgement(ERROR, "bad_header", problems, model_version=version)
        if not is_cine(header, rules):
            reason = f"not a cine clip: SOP class {header.sop_class_uid}, {header.frames} frame(s)"
            if header.has_pixel_data:
                # Even objects that are not judged must carry decodable pixels downstream.
                try:
                    decode_frames(path, [0])
                except DecodeError as exc:
                    return Judgement(ERROR, "undecodable", [f"{reason}; {exc}"], model_version=version)
            return Judgement(NOT_APPLICABLE, "not_cine", [reason], model_version=version)
        # Decode the sampled frames before anything else: a clip whose pixel data
        # is broken is an `error`, whatever its header says.
        samples = engine.info.num_frames if engine else self.config.frames.samples
        rate = header.frame_rate_hz or rules.assumed_frame_rate_hz
        frames_cfg = self.config.frames
        indices = frame_indices(header.frames, rate, window_start_s=frames_cfg.window_start_s,
                                sample_rate_hz=frames_cfg.sample_rate_hz, samples=samples)
        t0 = time.perf_counter()
        try:
            frames = decode_frames(path, indices)
        except DecodeError as exc:
            return Judgement(ERROR, "undecodable", [str(exc)], model_version=version,
                             frame_indices=indices)
        timings = {"decode": round((time.perf_counter() - t0) * 1000, 2)}
        results = evaluate_rules(header, rules, clip_rank_in_study=clip_rank_in_study)
        failed = [r for r in results if not r.passed]
        if failed:
            return Judgement(UNSATISFACTORY, failed[0].rule, [f"{r.rule}: {r.detail}" for r in failed],
                             results, model_version=version, frame_indices=indices,
                             timings_ms=timings)
        if engine is None:
            return Judgement(SATISFACTORY, None, ["rules only: no classifier model loaded"], results,
                             model_version=RULES_ONLY_VERSION, frame_indices=indices, timings_ms=timings)
        return self._classify(engine, frames, indices, results, timings)

    def _classify(self, engine: InferenceEngine, frames, indices: list[int], results: list[RuleResult],
                  timings: dict[str, float]) -> Judgement:
        info = engine.info
        t1 = time.perf_counter()
        clip = to_model_input(frames, size=info.crop_size, mean=info.mean, std=info.std)
        t2 = time.perf_counter()
        prediction = engine.predict(clip[None])
        t3 = time.perf_counter()
        timings.update(preprocess=round((t2 - t1) * 1000, 2), inference=round((t3 - t2) * 1000, 2))
        score = float(prediction.unsatisfactory_probability[0])
        threshold = self.config.model.threshold if self.config.model.threshold is not None else info.threshold
        if score >= threshold:
            reason_probs = prediction.reason_probabilities[0]
            reason = info.reason_classes[int(reason_probs.argmax())] if len(reason_probs) else "classifier"
            return Judgement(UNSATISFACTORY, reason,
                             [f"classifier: P(unsatisfactory)={score:.3f} >= threshold {threshold:.3f}; "
                              f"likely reason {reason}"],
                             results, score, threshold, engine.version, indices, timings)
        return Judgement(SATISFACTORY, None,
                         [f"classifier: P(unsatisfactory)={score:.3f} < threshold {threshold:.3f}"],
                         results, score, threshold, engine.version, indices, timings)
