"""Synthetic X-ray coronary angiogram phantoms for training and testing the gate.

Figures measured on these phantoms are not clinical figures: the clips are
rendered, not recorded. See ``kinds`` for the catalogue and labels,
``phantom`` for the renderer, ``dicom_writer`` for the XA objects,
``generate`` for a labelled data set and ``contact_sheet`` for a look at it.
"""

from .contact_sheet import contact_sheet
from .dicom_writer import write_xa
from .generate import generate
from .kinds import KINDS
from .phantom import render_clip, render_clip_meta

__all__ = ["KINDS", "render_clip", "render_clip_meta", "write_xa", "generate", "contact_sheet"]
