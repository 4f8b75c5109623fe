"""The verdict in DICOM: a Key Object Selection document per judged series.

Downstream systems that do not read the verdict log still need to know
which clips of a study the gate judged fit for AI work. For destinations
that opt in (`destinations[].key_objects: true`), once a series has settled
(every clip judged, nothing new for `key_objects.series_quiet_s`) and its
satisfactory clips have reached that destination, the gate sends a Key Object
Selection document (PS3.3 A.35.4, template TID 2010) in the same study:
document title (113000, DCM, "Of Interest"), a Key Object Description naming
the gate, the model version and the threshold, and one IMAGE reference per
satisfactory clip. Never a rejection note (113001 "Rejected for Quality
Reasons" and its kin make a PACS hide images): held clips are simply not
referenced.

The patient and study attributes are copied from a referenced clip, so the
document files under the same patient and study.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, KeyObjectSelectionDocumentStorage, generate_uid
from sqlalchemy import Engine

from angiogate import __version__
from angiogate.config import Config
from angiogate.dicom.header import read_header
from angiogate.store.ledger import (SeriesForKeyObject, key_object_exists, record_key_object,
                                    series_due_for_key_objects)
from angiogate.store.spool import Spool

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("0f6d5e9a-8c1b-5b7e-9d2a-6b3c4e5f7a81")

OF_INTEREST = ("113000", "DCM", "Of Interest")
KEY_OBJECT_DESCRIPTION = ("113012", "DCM", "Key Object Description")
# Copied from the clip so the document lands in the same patient and study (all type 2 there too).
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                 "SpecificCharacterSet")
SERIES_NUMBER = 9901  # a series number sites seldom use, so the gate's documents sort apart


@dataclass(frozen=True)
class Reference:
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def key_object_selection(source: Dataset, references: Sequence[Reference], *, description: str,
                         series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
                         now: datetime | None = None) -> Dataset:
    """A KOS document referencing `references`, in the patient and study of `source` (a clip's
    header). `description` becomes the Key Object Description (at most 1024 characters)."""
    if not references:
        raise ValueError("a Key Object Selection document needs at least one referenced clip")
    now = now or datetime.now(timezone.utc)
    ds = Dataset()
    for keyword in PATIENT_STUDY:
        if keyword in source:
            ds[keyword] = source[keyword]
        elif keyword != "SpecificCharacterSet":  # type 1C: absent means the default repertoire
            ds[keyword] = _empty(keyword)
    ds.SOPClassUID = KeyObjectSelectionDocumentStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.Modality = "KO"
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = "angiogate: clips fit for AI work"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.Manufacturer = "angiogate"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(*OF_INTEREST)]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = [template]
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.ConceptNameCodeSequence = [_code(*KEY_OBJECT_DESCRIPTION)]
    text.TextValue = description[:1024]
    ds.ContentSequence = [text] + [_image(r) for r in references]
    ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(ds.StudyInstanceUID, references)]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _empty(keyword: str) -> DataElement:
    return DataElement(tag_for_keyword(keyword), dictionary_VR(keyword), None)


def _image(reference: Reference) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = reference.sop_class_uid, reference.sop_instance_uid
    item.ReferencedSOPSequence = [sop]
    return item


def _evidence(study_instance_uid: str, references: Sequence[Reference]) -> Dataset:
    study = Dataset()
    study.StudyInstanceUID = study_instance_uid
    by_series: dict[str, list[Reference]] = {}
    for reference in references:
        by_series.setdefault(reference.series_instance_uid, []).append(reference)
    study.ReferencedSeriesSequence = []
    for series_uid, members in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = []
        for r in members:
            sop = Dataset()
            sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = r.sop_class_uid, r.sop_instance_uid
            series.ReferencedSOPSequence.append(sop)
        study.ReferencedSeriesSequence.append(series)
    return study


def _uid(*parts: str) -> str:
    """A UID derived from `parts` (2.25 + UUID5): the same series, destination and clips give
    the same document UID, so a document is made once, however often the series is looked at."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(parts)).int}"


class KeyObjects:
    """Makes the due documents for one destination and queues them on its forward queue."""

    def __init__(self, config: Config, engine: Engine, spool: Spool, destination: str):
        self.config, self.engine, self.spool, self.destination = config, engine, spool, destination

    def make_due(self) -> int:
        """Documents made now (each already queued for the destination)."""
        made = 0
        for series in series_due_for_key_objects(self.engine, self.destination,
                                                 quiet_s=self.config.forwarding.key_object_quiet_s):
            uids = sorted(uid for _, uid, *_ in series.clips)
            uid = _uid("kos", self.destination, series.series_instance_uid, *uids)
            if key_object_exists(self.engine, uid):
                continue
            try:
                made += self._make(series, uid)
            except Exception:  # a clip's header the builder cannot copy: that series waits, others go on
                log.exception("making the key object selection document of a series for %s failed",
                              self.destination)
        return made

    def _make(self, series: SeriesForKeyObject, uid: str) -> int:
        source = dcmread(self.spool.path(series.clips[0][2]), stop_before_pixels=True)
        references = [Reference(c, u, series.series_instance_uid) for c, u, *_ in series.clips]
        models = sorted({f"{m} (threshold {t:.4f})" if t is not None else str(m) for *_, m, t in series.clips})
        description = (f"angiogate {__version__}: {len(references)} clip(s) of this series judged satisfactory "
                       f"for downstream AI work by {'; '.join(models)}. Clips it held are not listed; "
                       f"this is not a rejection.")
        document = key_object_selection(source, references, description=description, sop_instance_uid=uid,
                                        series_instance_uid=_uid("kos-series", self.destination,
                                                                 series.study_instance_uid))
        temp = self.spool.incoming / f"tmpkos{uuid.uuid4().hex}.dcm"
        document.save_as(temp, enforce_file_format=True)
        kept = self.spool.keep(temp, uid)
        header = read_header(self.spool.path(kept.relative_path))
        if not record_key_object(self.engine, header=header, file_path=kept.relative_path, file_size=kept.size,
                                 file_sha256=kept.sha256, destination=self.destination,
                                 ae_title=self.config.calling_ae_title,
                                 detail=f"key object selection of {len(references)} satisfactory clip(s)"):
            return 0
        log.info("key object selection document of %d clip(s) queued for %s", len(references), self.destination)
        return 1
