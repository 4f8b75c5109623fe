"""Judge stored objects: header sanity, cine or not, rules, then the model.

Judging is two stages, so that many clips can be judged at once:
`Judge.prepare(path)` does everything before the model (header, sanity,
not-cine, frame indices, decoding frame 0 and the sampled frames, header
rules, the pixel rule `contrast_arrival`, preprocessing to the model's input)
and is safe to run in several threads;
`Judge.classify(prepared)` runs the model once per batch of prepared clips.
`Judge.judge(path)` is both for one clip.

A failed header rule ends judging before the model. A failed pixel rule
(`contrast_arrival`: nothing darkened against the first frame) does not: the
model still runs and its score is recorded, so the model can be measured on
its own, but the clip is unsatisfactory whatever the score. The pixel rule
can only hold a clip, never pass one the model holds.

None of them raises for bad input: whatever is wrong with an object becomes
an `error` judgement whose reasons say what, so the caller can record it and
apply the fail-open / fail-closed policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from angiogate.clip.decode import DecodeError, decode_frames
from angiogate.clip.input import FrameSampling, sampled_indices
from angiogate.clip.preprocess import model_input_from_resized, resize_frames, to_model_input
from angiogate.config import Config
from angiogate.decisions import ERROR, NOT_APPLICABLE, SATISFACTORY, UNSATISFACTORY
from angiogate.dicom.header import ClipHeader, HeaderError, read_header
from angiogate.engines.base import InferenceEngine
from angiogate.judge.contrast import RULE as CONTRAST_RULE
from angiogate.judge.contrast import SIZE as CONTRAST_SIZE
from angiogate.judge.contrast import contrast_arrival_resized, contrast_arrival_rule
from angiogate.judge.rules import RuleResult, evaluate_rules, header_problems, is_cine

log = logging.getLogger(__name__)
RULES_ONLY_VERSION = "none (rules only)"
SERVING = object()  # `Judge.prepare(engine=SERVING)`: the engine serving at the call


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


@dataclass
class PreparedClip:
    """One clip after everything that comes before the model.

    Either judged already (`judgement` set: an error, not a cine clip, a
    failed header rule, rules only), or `model_input` waits for `engine`, the
    engine that was serving when preparation began: it alone may classify
    the clip, so a model swapped in meanwhile never judges half a clip.
    """
    engine: InferenceEngine | None
    started: float  # time.perf_counter() when preparation began
    path: Path | None = None
    header: ClipHeader | None = None
    judgement: Judgement | None = None
    model_input: np.ndarray | None = None  # float32 (3, T, S, S)
    rule_results: list[RuleResult] = field(default_factory=list)
    frame_indices: list[int] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def needs_model(self) -> bool:
        return self.judgement is None

    @classmethod
    def finished(cls, judgement: Judgement, header: ClipHeader | None = None) -> "PreparedClip":
        """A clip whose judgement is known without preparing it."""
        return cls(engine=None, started=time.perf_counter(), header=header, judgement=judgement)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


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
        """Judge one clip: `prepare` then `classify` on a batch of one."""
        return self.classify([self.prepare(path, header=header, clip_rank_in_study=clip_rank_in_study)])[0]

    # ------------------------------------------------------------------ stage 1

    def prepare(self, path: Path, *, header: ClipHeader | None = None, clip_rank_in_study: int | None = None,
                engine: InferenceEngine | None | object = SERVING) -> PreparedClip:
        """Everything before the model, for one clip; never raises.

        `engine` is the engine to prepare for (and that will classify the
        clip); by default the one serving when this is called. Thread-safe: it
        reads only the file and the configuration. Timings recorded: `decode`
        and, for clips that go to the model, `preprocess`; a clip that ends
        here also gets its `total`.
        """
        if engine is SERVING:
            engine = self.engine  # one engine per clip, even if a new model is swapped in meanwhile
        prepared = PreparedClip(engine=engine, started=time.perf_counter(), path=path, header=header)
        version = engine.version if engine else RULES_ONLY_VERSION
        try:
            if prepared.header is None:
                try:
                    prepared.header = read_header(path)
                except HeaderError as exc:
                    prepared.judgement = Judgement(ERROR, "unreadable", [str(exc)], model_version=version)
            if prepared.judgement is None:
                self._prepare(path, prepared, clip_rank_in_study, version)
        except Exception as exc:  # a decoder or header quirk nobody foresaw: still a verdict
            log.exception("judging %s failed unexpectedly", path)
            prepared.model_input = None
            prepared.judgement = Judgement(ERROR, "internal",
                                           [f"internal error while judging: {type(exc).__name__}: {exc}"],
                                           model_version=version)
        if prepared.judgement is not None:
            prepared.judgement.timings_ms["total"] = _ms(prepared.started)
        return prepared

    def _prepare(self, path: Path, prepared: PreparedClip, clip_rank_in_study: int | None,
                 version: str) -> None:
        """Fill `prepared.judgement` (the clip ends before the model) or `prepared.model_input`."""
        header, engine, rules = prepared.header, prepared.engine, self.config.rules
        if not header.has_pixel_data and header.sop_class_uid not in rules.sop_classes:
            # A dose report, structured report, key object selection...: not an image at
            # all, so not a cine clip (policies.non_cine). A cine SOP class without
            # pixel data is broken, and stays an error (header_problems).
            prepared.judgement = Judgement(
                NOT_APPLICABLE, "not_cine",
                [f"not a cine clip: SOP class {header.sop_class_uid}, no pixel data"], model_version=version)
            return
        problems = header_problems(header, rules)
        if problems:
            prepared.judgement = Judgement(ERROR, "bad_header", problems, model_version=version)
            return
        if not is_cine(header, rules):
            reason = f"not a cine clip: SOP class {header.sop_class_uid}, {header.frames} frame(s)"
            if header.has_pixel_data:
                # Even objects that are not judged must carry decodable pixels downstream.
                try:
                    decode_frames(path, [0])
                except DecodeError as exc:
                    prepared.judgement = Judgement(ERROR, "undecodable", [f"{reason}; {exc}"],
                                                   model_version=version)
                    return
            prepared.judgement = Judgement(NOT_APPLICABLE, "not_cine", [reason], model_version=version)
            return
        # Decode the sampled frames before anything else: a clip whose pixel data
        # is broken is an `error`, whatever its header says. Frame 0 comes in the
        # same call (the contrast rule's reference; usually before the injection).
        samples = engine.info.num_frames if engine else self.config.frames.samples
        indices = sampled_indices(header, samples, FrameSampling.of(self.config))
        t0 = time.perf_counter()
        try:
            decoded = decode_frames(path, [0, *indices])
        except DecodeError as exc:
            prepared.judgement = Judgement(ERROR, "undecodable", [str(exc)], model_version=version,
                                           frame_indices=indices)
            return
        first, frames = decoded[0], decoded[1:]
        timings = {"decode": _ms(t0)}
        results = evaluate_rules(header, rules, clip_rank_in_study=clip_rank_in_study)
        resized = None  # the sampled frames at CONTRAST_SIZE, if the contrast rule made them
        if rules.min_contrast_arrival is not None:
            t1 = time.perf_counter()
            # Resized once: the model takes the same frames at the same size (112 px) when its
            # crop size is the rule's, so to_model_input need not resize them again.
            resized = resize_frames(frames, CONTRAST_SIZE)
            arrival = contrast_arrival_resized(resize_frames(first[None], CONTRAST_SIZE)[0], resized)
            results.append(contrast_arrival_rule(arrival, rules.min_contrast_arrival))
            timings["contrast"] = _ms(t1)
        failed = [r for r in results if not r.passed]
        header_failed = [r for r in failed if r.rule != CONTRAST_RULE]
        if header_failed:  # the model does not run
            prepared.judgement = Judgement(UNSATISFACTORY, header_failed[0].rule,
                                           [f"{r.rule}: {r.detail}" for r in failed], results,
                                           model_version=version, frame_indices=indices, timings_ms=timings)
            return
        if engine is None:
            prepared.judgement = (Judgement(UNSATISFACTORY, failed[0].rule,
                                            [f"{r.rule}: {r.detail}" for r in failed]
                                            + ["rules only: no classifier model loaded"], results,
                                            model_version=RULES_ONLY_VERSION, frame_indices=indices,
                                            timings_ms=timings) if failed else
                                  Judgement(SATISFACTORY, None, ["rules only: no classifier model loaded"],
                                            results, model_version=RULES_ONLY_VERSION, frame_indices=indices,
                                            timings_ms=timings))
            return
        info = engine.info
        t1 = time.perf_counter()
        if resized is not None and info.crop_size == CONTRAST_SIZE:
            prepared.model_input = model_input_from_resized(resized, mean=info.mean, std=info.std,
                                                            channels=info.input_channels)
        else:
            prepared.model_input = to_model_input(frames, size=info.crop_size, mean=info.mean, std=info.std,
                                                  channels=info.input_channels)
        timings["preprocess"] = _ms(t1)
        prepared.rule_results, prepared.frame_indices, prepared.timings_ms = results, indices, timings

    # ------------------------------------------------------------------ stage 2

    def classify(self, prepared: Sequence[PreparedClip]) -> list[Judgement]:
        """One judgement per prepared clip, in order; never raises.

        Clips already judged are passed through. The others go to the model
        in one `predict` call per engine (a batch is normally one engine: the
        judge worker never mixes them). Timings: `inference` is this clip's
        share of its batch (batch time / clips in the batch), `inference_batch`
        the whole batch's time (the two are equal for a clip judged alone),
        `total` runs from the start of preparation to its judgement, so it
        includes time spent waiting for the batch.
        """
        judgements: list[Judgement | None] = [p.judgement for p in prepared]
        groups: dict[int, list[int]] = {}
        for k, clip in enumerate(prepared):
            if clip.needs_model:
                groups.setdefault(id(clip.engine), []).append(k)
        for members in groups.values():
            for k, judgement in zip(members, self._classify_batch([prepared[k] for k in members])):
                judgements[k] = judgement
        return judgements

    def _classify_batch(self, batch: list[PreparedClip]) -> list[Judgement]:
        """Judgements of clips prepared for one engine; a failing batch is retried clip by clip,
        so one clip the model cannot take does not turn its neighbours into errors."""
        engine = batch[0].engine
        try:
            t0 = time.perf_counter()
            prediction = engine.predict(np.stack([clip.model_input for clip in batch]))
            batch_ms = _ms(t0)
            return [self._decide(clip, float(prediction.unsatisfactory_probability[k]),
                                 prediction.reason_probabilities[k], batch_ms, len(batch))
                    for k, clip in enumerate(batch)]
        except Exception as exc:
            if len(batch) > 1:
                log.warning("classifying a batch of %d clips failed (%s: %s); classifying them one by one",
                            len(batch), type(exc).__name__, exc)
                return [judgement for clip in batch for judgement in self._classify_batch([clip])]
            log.exception("classifying %s failed unexpectedly", batch[0].path)
            judgement = Judgement(ERROR, "internal", [f"internal error while judging: {type(exc).__name__}: {exc}"],
                                  model_version=engine.version, frame_indices=batch[0].frame_indices,
                                  timings_ms=dict(batch[0].timings_ms))
            judgement.timings_ms["total"] = _ms(batch[0].started)
            return [judgement]

    def _decide(self, clip: PreparedClip, score: float, reason_probs: np.ndarray, batch_ms: float,
                batch_size: int) -> Judgement:
        engine, info = clip.engine, clip.engine.info
        timings = dict(clip.timings_ms, inference=round(batch_ms / batch_size, 2), inference_batch=batch_ms)
        timings["total"] = _ms(clip.started)
        threshold = self.config.model.threshold if self.config.model.threshold is not None else info.threshold
        failed = [r for r in clip.rule_results if not r.passed]  # pixel rules only: header ones end earlier
        if failed:  # held whatever the model says; its score is still recorded
            verb = ">=" if score >= threshold else "<"
            return Judgement(UNSATISFACTORY, failed[0].rule,
                             [f"{r.rule}: {r.detail}" for r in failed]
                             + [f"classifier: P(unsatisfactory)={score:.3f} {verb} threshold {threshold:.3f} "
                                f"(the clip is held by {failed[0].rule} whatever the classifier says)"],
                             clip.rule_results, score, threshold, engine.version, clip.frame_indices, timings)
        if score >= threshold:
            reason = info.reason_classes[int(reason_probs.argmax())] if len(reason_probs) else "classifier"
            return Judgement(UNSATISFACTORY, reason,
                             [f"classifier: P(unsatisfactory)={score:.3f} >= threshold {threshold:.3f}; "
                              f"likely reason {reason}"],
                             clip.rule_results, score, threshold, engine.version, clip.frame_indices, timings)
        return Judgement(SATISFACTORY, None,
                         [f"classifier: P(unsatisfactory)={score:.3f} < threshold {threshold:.3f}"],
                         clip.rule_results, score, threshold, engine.version, clip.frame_indices, timings)
