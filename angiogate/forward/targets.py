"""The kinds of forward target, and the targets the configuration names.

The one place that knows every kind: a DICOM peer per `destinations[]`
entry (over TLS when its `tls` block says so), or the local outbox when
there is none. A new kind (DICOMweb, say) is a module with `owns(key)`,
`ae_title_of(key)` and a target class, added to KINDS and to
`configured_targets`.
"""

from __future__ import annotations

from angiogate.config import Config, Destination
from angiogate.forward import dicom_target, outbox_target
from angiogate.forward.dicom_target import DicomTarget, destination_key
from angiogate.forward.outbox_target import OutboxTarget, outbox_key
from angiogate.forward.target import Target

KINDS = (outbox_target, dicom_target)


def target_for(config: Config, destination: Destination | None = None) -> Target:
    """The target of one configured destination, or the outbox when `destination` is None."""
    if destination is not None:
        return DicomTarget(destination, config)
    return OutboxTarget(config.outbox_dir)


def configured_targets(config: Config) -> list[Target]:
    """Every place a forwarded clip goes, as the configuration says now."""
    if config.destinations:
        return [target_for(config, d) for d in config.destinations]
    return [target_for(config)]


def forward_targets(config: Config) -> list[str]:
    """Queue keys of every place a forwarded clip goes (no connection is made)."""
    if config.destinations:
        return [destination_key(d) for d in config.destinations]
    return [outbox_key(config.outbox_dir)]


def ae_title_of(key: str) -> str | None:
    """The AE title a queue key names (None for targets without one, such as the outbox)."""
    for kind in KINDS:
        if kind.owns(key):
            return kind.ae_title_of(key)
    return None
