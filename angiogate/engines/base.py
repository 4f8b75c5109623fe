"""What every inference engine is: the protocol the judge talks to, and its shared facts.

The judge gives an `InferenceEngine` float32 clips shaped (B, 3, T, S, S)
and gets back a `Prediction`: the probability of `unsatisfactory` per clip
and the reason-head probabilities. Every engine turns its logits into one
through `split_logits`, so engines differ only in the logits they compute.
Every engine's `version` names the checkpoint (`checkpoint_version`: version
+ content hash) and the engine and precision, so each verdict row says
exactly what judged it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from angiogate.engines.info import ModelInfo

ENGINES = ("torch", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
# Fastest first: what `precision: auto` prefers when its agreement check has passed.
PREFERENCE = ("int8", "bf16", "fp32")


class EngineError(RuntimeError):
    """The configured engine cannot serve this checkpoint; the message says what to do."""


@dataclass(frozen=True)
class Prediction:
    unsatisfactory_probability: np.ndarray  # (B,)
    reason_probabilities: np.ndarray        # (B, len(reason_classes))


class InferenceEngine(Protocol):
    info: ModelInfo
    name: str
    version: str

    def predict(self, clips: np.ndarray) -> Prediction: ...


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def split_logits(logits: np.ndarray, n_reasons: int) -> Prediction:
    """(B, 2 + n_reasons) logits -> P(unsatisfactory) and the reason distribution.

    Every engine goes through this one function, so engines differ only in
    the logits they compute.
    """
    logits = np.asarray(logits, dtype=np.float32)
    binary = _softmax(logits[:, :2])[:, 1]
    reasons = _softmax(logits[:, 2:2 + n_reasons]) if n_reasons else logits[:, :0]
    return Prediction(binary.astype(np.float32), reasons.astype(np.float32))


def checkpoint_version(info: ModelInfo, digest: str) -> str:
    """The weights exactly: same name, other bytes is a new version."""
    return f"{info.version}+{digest[:12]}"
