"""Who the gate says it is on the wire: its own Implementation Class UID and version name.

Every association the gate opens or accepts carries these in its A-ASSOCIATE
user information (PS3.7 D.3.3.2), not pynetdicom's, so a PACS team can tell
angiogate from other pynetdicom software in their logs, and so the
conformance statement (docs/conformance.md) can name them.
"""

from __future__ import annotations

from pynetdicom import AE

from angiogate import __version__

# A UUID-derived UID (PS3.5 B.2): the project has no registered root.
IMPLEMENTATION_CLASS_UID = "2.25.104110205183785750036815294303071297852"
# At most 16 characters of the default repertoire: ANGIOGATE_ plus the version.
IMPLEMENTATION_VERSION_NAME = ("ANGIOGATE_" + __version__.replace(".", ""))[:16]


def gate_ae(ae_title: str) -> AE:
    """A pynetdicom AE that presents the gate's implementation identity."""
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae
