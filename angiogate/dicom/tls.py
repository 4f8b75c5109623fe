"""DICOM TLS (PS3.15 B.1 secure transport), both ways: the one place contexts are made.

Inbound, `server_ssl_context` builds the SCP's context from `tls`. Outbound,
`ClientTls` is one peer's context, from `destinations[].tls` (forwarding)
or `storage_commitment.peers[].tls` (commitment reports), which pynetdicom
takes as `associate(..., tls_args=(context, server_hostname))`. Both ask for
TLS 1.2 or newer. `peer_certificate` reads who a connected client's verified
certificate says it is, for binding calling AE titles to certificates
(security.py).

pynetdicom logs a failed client handshake and hands back an aborted
association, without the reason. A `ClientTls` context therefore makes
sockets (`SSLContext.sslsocket_class`) that remember the last TLS error they
met, in the handshake or after it: with TLS 1.3 a peer that refuses the
gate's client certificate says so only once the handshake is over, on the
first read. The forward failure then names it (an unknown CA, a host name
the certificate does not carry, a client certificate the peer refused).
pynetdicom also logs each such error with a traceback, which reads like a
crash at every retry: `ClientTls` keeps its line and drops the traceback.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from dataclasses import dataclass

from angiogate.config import ConfigError, DestinationTls, Tls


def _load_chain(ctx: ssl.SSLContext, certificate, private_key, where: str) -> None:
    try:
        ctx.load_cert_chain(certfile=str(certificate), keyfile=str(private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.certificate / {where}.private_key cannot be loaded: {exc}") from exc


def _load_cas(ctx: ssl.SSLContext, ca_certificates, where: str) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca_certificates))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.ca_certificates cannot be loaded: {exc}") from exc


def server_ssl_context(tls: Tls) -> ssl.SSLContext:
    """The SCP's TLS context from the `tls` settings (which must be enabled)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for key in ("certificate", "private_key", "ca_certificates"):
        path = getattr(tls, key)
        if path is not None and not path.is_file():
            raise ConfigError(f"tls.{key}: no such file {path}")
    _load_chain(ctx, tls.certificate, tls.private_key, "tls")
    if tls.ca_certificates is not None:
        _load_cas(ctx, tls.ca_certificates, "tls")
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ------------------------------------------------------------ outbound

def describe_tls_error(exc: BaseException) -> str:
    """OpenSSL's reason for a TLS failure, with the verification detail when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.reason}: {exc.verify_message}"  # e.g. CERTIFICATE_VERIFY_FAILED: unable to get ...
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)  # e.g. TLSV1_ALERT_UNKNOWN_CA: the peer refused our certificate
    return f"{type(exc).__name__}: {exc}"


class _RememberingSocket(ssl.SSLSocket):
    """An SSLSocket that leaves its last TLS error on its context (a `_ClientContext`)."""

    def do_handshake(self, *args, **kwargs):
        try:
            return super().do_handshake(*args, **kwargs)
        except ssl.SSLError as exc:
            self.context.last_error = exc
            raise

    def recv(self, *args, **kwargs):
        try:
            return super().recv(*args, **kwargs)
        except ssl.SSLError as exc:
            self.context.last_error = exc
            raise


class _NoTlsTraceback(logging.Filter):
    """Keeps pynetdicom's line about a TLS error, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ssl.SSLError):
            record.exc_info, record.exc_text = None, None
        return True


_NO_TLS_TRACEBACK = _NoTlsTraceback()


def _quiet_tls_tracebacks() -> None:
    for name in ("pynetdicom.transport", "pynetdicom.dul"):  # connect(), and the reader thread
        logger = logging.getLogger(name)
        if _NO_TLS_TRACEBACK not in logger.filters:
            logger.addFilter(_NO_TLS_TRACEBACK)


class _ClientContext(ssl.SSLContext):
    sslsocket_class = _RememberingSocket
    last_error: BaseException | None = None


class ClientTls:
    """TLS toward one peer: what pynetdicom needs (`tls_args`) and why the last try failed.

    Raises ConfigError naming `where` (e.g. "destinations[PACS@10.1.2.3:104].tls")
    when a certificate, key or CA file cannot be loaded, so a gate with a broken
    TLS setting does not start.
    """

    def __init__(self, settings: DestinationTls, host: str, where: str):
        ctx = _ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.ca_certificates is not None:
            _load_cas(ctx, settings.ca_certificates, where)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if settings.certificate is not None:
            _load_chain(ctx, settings.certificate, settings.private_key, where)
        ctx.check_hostname = settings.check_hostname
        self.context = ctx
        self.server_hostname = settings.server_name or host
        _quiet_tls_tracebacks()

    @property
    def tls_args(self) -> tuple[ssl.SSLContext, str]:
        return self.context, self.server_hostname

    def forget(self) -> None:
        """Call before associating, so `failure()` speaks of this try only."""
        self.context.last_error = None

    def failure(self) -> str | None:
        """Why TLS failed since `forget()`, or None if it did not."""
        error = self.context.last_error
        return None if error is None else describe_tls_error(error)


def client_tls(settings: DestinationTls, host: str, where: str) -> ClientTls | None:
    """`ClientTls` for an enabled `tls` block, None for plain TCP."""
    return ClientTls(settings, host, where) if settings.enabled else None


# ------------------------------------------------------------ who a client is

@dataclass(frozen=True)
class PeerCertificate:
    """A connected client's verified certificate: its subject and SHA-256 fingerprint."""
    subject: frozenset[tuple[str, str]]  # (attribute as Python's ssl names it, value)
    sha256: str  # lower-case hex of the DER certificate's SHA-256

    @property
    def common_name(self) -> str | None:
        return next((value for name, value in self.subject if name == "commonName"), None)

    def matches_subject(self, attributes: frozenset[tuple[str, str]], whole: bool) -> bool:
        return self.subject == attributes if whole else attributes <= self.subject

    def describe(self) -> str:
        return f"CN {self.common_name!r}, sha256 {self.sha256[:16]}..."


def peer_certificate(sock) -> PeerCertificate | None:
    """The verified client certificate on `sock` (the association's socket), or None
    when it is not TLS or the client showed none."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    fields = sock.getpeercert()  # {} unless the certificate was verified
    if not der or not fields:
        return None
    subject = frozenset(pair for rdn in fields.get("subject", ()) for pair in rdn)
    return PeerCertificate(subject=subject, sha256=hashlib.sha256(der).hexdigest())
