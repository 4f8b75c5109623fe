"""Catalogue of synthetic clip kinds and the paper's labels for them.

Each kind is one way a cath-lab cine run can look. The label follows the
paper's criteria: a clip is satisfactory only when it shows the native
coronary arteries filled with contrast and unobstructed. The reason names the
criterion an unsatisfactory clip fails (``non_coronary``, ``no_contrast``,
``partial``, ``device``, ``graft``).

Series descriptions are what an operator's protocol would write; runs that go
wrong (reflux, stopped early, a device in the way) carry the same description
as a good coronary run, as they do in real archives.
"""

from __future__ import annotations

from dataclasses import dataclass

SATISFACTORY = "satisfactory"
UNSATISFACTORY = "unsatisfactory"
REASONS = ("non_coronary", "no_contrast", "partial", "device", "graft")

_LCA_DESC = ("Coronary LCA", "LCA", "Left Coronary", "CORONARY LEFT", "Cors LCA", "Coro Left",
             "LCA cine", "Left Heart Cath LCA", "Coronary Angio")
_RCA_DESC = ("Coronary RCA", "RCA", "Right Coronary", "CORONARY RIGHT", "Cors RCA", "Coro Right",
             "RCA cine", "Left Heart Cath RCA", "Coronary Angio")


@dataclass(frozen=True)
class Kind:
    """One kind of phantom clip."""

    name: str
    label: str
    reason: str | None
    description: str
    series_descriptions: tuple[str, ...]

    @property
    def satisfactory(self) -> bool:
        return self.label == SATISFACTORY


def _k(name, reason, description, series):
    label = SATISFACTORY if reason is None else UNSATISFACTORY
    assert reason is None or reason in REASONS, reason
    return Kind(name, label, reason, description, tuple(series))


_ALL = (
    _k("left_coronary", None,
       "left coronary system (LM, LAD with diagonals/septals, LCx with marginals) fills and washes "
       "out; sometimes small ECG leads, sternal wires, a stent or a guide wire that leave it visible",
       _LCA_DESC),
    _k("right_coronary", None,
       "right coronary artery with conus, acute marginals, PDA and PL fills and washes out; "
       "sometimes small foreign objects that leave it visible",
       _RCA_DESC),
    _k("ventriculogram", "non_coronary",
       "pigtail catheter in the left ventricle; the cavity fills densely and beats",
       ("LV gram", "LV", "Ventriculogram", "LV RAO 30", "LEFT VENTRICLE", "LV Angio", "LVgram")),
    _k("aortogram", "non_coronary",
       "pigtail in the aortic root; root, ascending aorta and arch fill",
       ("Ao root", "Aortogram", "AORTA", "Aortic Root", "Ao LAO", "Root shot", "Ascending Ao")),
    _k("catheter_only", "no_contrast",
       "catheter (sometimes wire) in place, no contrast injected",
       _LCA_DESC + _RCA_DESC),
    _k("faint_contrast", "no_contrast",
       "coronary tree only faintly opacified (diluted or tiny injection)",
       _LCA_DESC + _RCA_DESC),
    _k("reflux", "partial",
       "catheter not engaged: contrast refluxes into the aortic root, coronaries barely fill",
       _LCA_DESC + _RCA_DESC),
    _k("stopped_early", "partial",
       "recording stops as contrast reaches the ostium, before the tree fills",
       _LCA_DESC + _RCA_DESC + ("PCI", "PTCA", "Stent LAD")),
    _k("bypass_graft", "graft",
       "selective bypass-graft injection (vein graft from the aorta or LIMA with surgical clips) "
       "filling the graft and the native vessel beyond the anastomosis",
       ("SVG", "SVG to LAD", "SVG OM", "Vein graft", "LIMA", "LIMA-LAD", "Graft", "SVG RCA", "Grafts")),
    _k("device_obstruction", "device",
       "pacemaker/ICD can and leads, LVAD or spinal hardware covering most of a filled coronary tree",
       _LCA_DESC + _RCA_DESC),
)

KINDS: dict[str, Kind] = {k.name: k for k in _ALL}
