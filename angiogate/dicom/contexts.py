"""What the gate accepts and proposes: storage SOP classes and transfer syntaxes."""

from __future__ import annotations

from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# Accepted as received and forwarded as received: the gate never transcodes
# unless a destination accepts none of the object's own syntax.
# Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) is not accepted,
# for storage or anything else: pydicom inflates a deflated dataset whole in
# memory (a few MB can inflate to GBs), no angiography modality sends cine
# deflated, and every sender also proposes an uncompressed syntax, which it
# then uses (DCMTK storescu -xd inflates the file and sends it so).
ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
]

# Verification and Storage Commitment: pynetdicom's defaults less Deflate.
NON_STORAGE_TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]

STORAGE_SOP_CLASSES = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
