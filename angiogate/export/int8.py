"""int8 exports: NNCF post-training quantisation, calibrated on clips prepared as the judge prepares them.

NNCF is imported only here, only for int8; serving needs OpenVINO alone.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from angiogate.clip.input import model_input
from angiogate.config import Config
from angiogate.engines.base import split_logits
from angiogate.engines.exports import ExportError
from angiogate.engines.model import ModelInfo
from angiogate.export.clips import LabelledClip

log = logging.getLogger(__name__)


def quantize_int8(fp32_model, calibration: Sequence[LabelledClip], info: ModelInfo, config: Config, *,
                  reference: Callable[[np.ndarray], np.ndarray] | None = None,
                  max_mean_difference: float | None = None, validation_share: float = 0.5):
    """NNCF post-training quantisation, calibrated on clips prepared as the judge prepares them.

    With `max_mean_difference` (and `reference`, torch fp32's P(unsatisfactory)
    of a batch), NNCF's accuracy control keeps in fp32 the operations that
    move P(unsatisfactory) most, until its mean absolute difference from
    `reference` over the last `validation_share` of the calibration clips is
    at most `max_mean_difference`. Slow (it re-ranks the operations as it
    goes), so it is asked for, never the default. The evaluation clips of the
    agreement check are never seen here, so that check stays independent.
    """
    try:
        import nncf
    except ImportError as exc:
        raise ExportError("int8 export needs NNCF: pip install 'angiogate[export]' (or nncf)") from exc

    usable = []
    for clip in calibration:
        try:
            usable.append(model_input(clip.path, info, config)[None])
        except (ValueError, OSError) as exc:
            log.warning("calibration clip %s skipped: %s", clip.path, exc)
    if not usable:
        raise ExportError("int8 export: no decodable calibration clip")
    dataset = nncf.Dataset(usable)
    preset = nncf.QuantizationPreset(config.model.int8_preset)  # "performance" | "mixed"
    fast, advanced = bias_correction(config.model.int8_bias_correction)
    settings = dict(preset=preset, subset_size=len(usable), fast_bias_correction=fast,
                    ignored_scope=fp32_scope(config.model.int8_fp32_types))
    if max_mean_difference is None:
        return nncf.quantize(fp32_model, dataset, **settings, advanced_parameters=advanced)
    if reference is None:
        raise ExportError("int8 accuracy control needs the torch model's scores as its reference")
    validation = usable[len(usable) - max(1, int(len(usable) * validation_share)):]
    targets = [float(reference(batch)[0]) for batch in validation]
    return nncf.quantize_with_accuracy_control(
        fp32_model, dataset, nncf.Dataset(list(zip(validation, targets))),
        _closeness_to(len(info.reason_classes)), max_drop=max_mean_difference, **settings,
        advanced_quantization_parameters=advanced,
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
            ranking_subset_size=min(60, len(validation))))


def bias_correction(mode: str):
    """NNCF's (fast_bias_correction, advanced parameters) for `model.int8_bias_correction`.

    none | fast (NNCF's default) | exact (slow).

    Bias correction shifts each quantised layer's bias by the mean error the
    calibration clips showed there; on the bundled X3D-S that shift did not
    carry over to other clips (docs/model_comparison.md, "int8 without bias
    correction")."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    return mode != "exact", AdvancedQuantizationParameters(disable_bias_correction=mode == "none")


def fp32_scope(types):
    """NNCF's ignored scope for `model.int8_fp32_types`: operations of these types keep fp32 inputs.

    On the bundled X3D-S the quantisers in front of the squeeze-excitation
    Multiply, the residual Add and the head's AvgPool carried half of int8's
    error (docs/model_comparison.md, "int8 with fp32 adds"). Not validated:
    a model without one of these types is quantised all the same."""
    import nncf

    return nncf.IgnoredScope(types=list(types), validate=False) if types else None


def _closeness_to(n_reasons: int):
    """NNCF validation function: 1 - mean |P(unsatisfactory) - reference|, and each clip's term.

    One minus, not minus alone: NNCF 3.4 divides by the fp32 model's metric
    even for an absolute drop, and the fp32 IR can match torch exactly (0)."""
    def validate(compiled, items) -> tuple[float, list[float]]:
        output = compiled.output(0)
        terms = [1 - abs(float(split_logits(np.array(compiled(batch)[output]), n_reasons)
                            .unsatisfactory_probability[0]) - target) for batch, target in items]
        return float(np.mean(terms)), terms

    return validate


def fp32_operations(model) -> tuple[int, int]:
    """(weighted operations left in fp32, all weighted operations) of an IR.

    A quantised weight reaches its operation through a FakeQuantize (in
    memory) or as an 8-bit constant behind Convert and scale nodes (in a
    saved IR); anything else is still floating point.
    """
    weighted = [op for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED]
    return sum(1 for op in weighted if not _quantised_weight(op.input_value(1).get_node())), len(weighted)


_WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")


def _quantised_weight(node, depth: int = 0) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
    if depth > 6 or kind not in ("Convert", "Reshape", "Multiply", "Subtract", "Transpose", "Unsqueeze"):
        return False
    return any(_quantised_weight(node.input_value(i).get_node(), depth + 1) for i in range(node.get_input_size()))
