"""Who may talk to the gate: the AE allow-list, client certificates bound to
calling AE titles, and the TLS handshake of the SCP (contexts: tls.py).

Allow-list. pynetdicom's own check (`AE.require_calling_aet`) looks at the
calling AE title only. The gate also checks the source address, in a handler
bound to EVT_REQUESTED: pynetdicom triggers it when the A-ASSOCIATE-RQ has
arrived and, if the handler has rejected the association
(`assoc.acse.send_reject`), skips its own negotiation (the route its
maintainer describes in pydicom/pynetdicom#408). The refusal is
A-ASSOCIATE-RJ result 1 (rejected-permanent), source 1 (DICOM UL
service-user), reason 3 (calling-AE-title-not-recognized), also for a known
AE title calling from an address not listed for it. EVT_REQUESTED is a
notification event, whose handler exceptions pynetdicom only logs before
going on to accept, so the handler fails closed: if the check itself breaks,
the association is refused (rejected-transient, no reason given).

Certificate binding. An entry with `tls_subject` or `cert_sha256` binds its
AE title to a client certificate: an association calling as a bound AE title
must have shown a verified certificate that matches one of the entries
binding that title (from an address the entry allows); entries that do not
bind it, address-only ones included, do not admit it. The refusal is the
same A-ASSOCIATE-RJ. The certificate is read from the association's socket
(`assoc.dul.socket.socket`, an ssl.SSLSocket after GateServer's handshake).

TLS. pynetdicom's server does the TLS handshake in its accept loop, with no
timeout: one client that connects and says nothing would stop every other
sender from getting in. `GateServer` wraps the socket there but does the
handshake in the connection's own thread, bounded by `network_timeout_s`
(and by the negotiation deadline of peer_limits.py, which `GateServer`
applies to every connection).

Only AE titles and addresses are logged here, never anything from a dataset.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass

from pynetdicom import AE, evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from angiogate.config import AllowedPeer, Config, tls_subject_attributes
from angiogate.dicom import reactor_wait
from angiogate.dicom.pdu_socket import PduSocket
from angiogate.dicom.peer_limits import GuardedSSLSocket, PeerLimits
from angiogate.dicom.tls import PeerCertificate, peer_certificate
from angiogate.dicom.untrusted import printable

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ parameters (PS3.8 section 9.3.4)
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
REASON_NO_REASON_GIVEN = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:10.1.2.3 on a dual-stack socket is 10.1.2.3
    return ip


@dataclass(frozen=True)
class _Entry:
    ae_title: str | None
    network: Network | None
    subject: tuple[frozenset[tuple[str, str]], bool] | None = None  # tls_subject_attributes()
    sha256: str | None = None

    @classmethod
    def of(cls, peer: AllowedPeer) -> "_Entry":
        return cls(peer.ae_title, ipaddress.ip_network(peer.address, strict=False) if peer.address else None,
                   tls_subject_attributes(peer.tls_subject) if peer.tls_subject else None, peer.cert_sha256)

    @property
    def binds(self) -> bool:
        return self.subject is not None or self.sha256 is not None

    def ae_matches(self, ae_title: str) -> bool:
        return self.ae_title is None or self.ae_title == ae_title

    def address_matches(self, ip) -> bool:
        return self.network is None or (ip is not None and ip.version == self.network.version
                                        and ip in self.network)

    def certificate_matches(self, certificate: PeerCertificate | None) -> bool:
        if certificate is None:
            return False
        return ((self.subject is None or certificate.matches_subject(*self.subject))
                and (self.sha256 is None or certificate.sha256 == self.sha256))


class AllowList:
    """Which calling AE titles may connect from which addresses, and with which
    client certificate where an entry binds one.

    Empty: everyone. Otherwise a peer is allowed when at least one entry
    matches both its calling AE title (when the entry names one) and its
    source address (when the entry names one). A calling AE title that some
    entry binds to a certificate is allowed only by such entries, and only
    with a matching certificate.
    """

    def __init__(self, peers: list[AllowedPeer]):
        self.entries = [_Entry.of(p) for p in peers]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def binds(self, ae_title: str) -> bool:
        return any(e.binds and e.ae_title == ae_title for e in self.entries)

    def refusal(self, ae_title: str, address: str, certificate: PeerCertificate | None = None) -> str | None:
        """None if the peer is allowed, else why it is not (for the log)."""
        if not self.entries:
            return None
        ae_title = (ae_title or "").strip()
        ip = _ip(address or "")
        if self.binds(ae_title):
            bound = [e for e in self.entries if e.binds and e.ae_title == ae_title]
            from_here = [e for e in bound if e.address_matches(ip)]
            if not from_here:
                return "calling AE title is allowed, but not from this address"
            if any(e.certificate_matches(certificate) for e in from_here):
                return None
            if certificate is None:
                return "calling AE title is bound to a client certificate and none was shown"
            return f"client certificate ({certificate.describe()}) is not the one bound to this calling AE title"
        if any(e.ae_matches(ae_title) and e.address_matches(ip) for e in self.entries):
            return None
        if any(e.ae_title is not None and e.ae_title == ae_title for e in self.entries):
            return "calling AE title is allowed, but not from this address"
        return "calling AE title not on the allow-list"


def _refuse(assoc, result: int, reason: int) -> None:
    # What pynetdicom's own ACSE does when it rejects: send A-ASSOCIATE-RJ,
    # then kill() waits for the peer to close (or the ARTIM timer) so the PDU
    # is on the wire before the socket goes.
    assoc.acse.send_reject(result, SOURCE_SERVICE_USER, reason)
    assoc.kill()


def _handle_requested(event, allow_list: AllowList) -> None:
    """EVT_REQUESTED: refuse associations the allow-list does not admit."""
    assoc = event.assoc
    ae_title, address = "?", "?"
    try:
        request = assoc.requestor.primitive
        ae_title = (request.calling_ae_title or "").strip()
        address = assoc.requestor.address
        certificate = peer_certificate(assoc.dul.socket.socket) if allow_list.binds(ae_title) else None
        why = allow_list.refusal(ae_title, address, certificate)
        if why is None:
            return
        log.warning("refused association from AE %r at %s (called %r): %s; answered "
                    "A-ASSOCIATE-RJ rejected-permanent, service-user, calling-AE-title-not-recognized",
                    printable(ae_title), printable(address), printable((request.called_ae_title or "").strip()),
                    printable(why, 200))
        _refuse(assoc, REJECTED_PERMANENT, REASON_CALLING_AE_NOT_RECOGNIZED)
    except Exception:  # fail closed: pynetdicom would otherwise go on and accept
        log.exception("allow-list check failed for AE %r at %s; association refused",
                      printable(ae_title), printable(address))
        if not (assoc.is_rejected or assoc.is_aborted):
            try:
                _refuse(assoc, REJECTED_TRANSIENT, REASON_NO_REASON_GIVEN)
            except Exception:
                assoc.abort()


def _handle_rejected(event) -> None:
    """EVT_REJECTED: pynetdicom's own refusals (wrong called AE, too many associations)."""
    assoc = event.assoc
    try:
        rj = assoc.acceptor.primitive
        log.warning("refused association from AE %r at %s (called %r): %s, %s: %s",
                    printable((assoc.requestor.ae_title or "").strip()), printable(assoc.requestor.address),
                    printable((assoc.requestor.primitive.called_ae_title or "").strip()),
                    rj.result_str, rj.source_str, rj.reason_str)
    except Exception:
        log.warning("refused an association (details unavailable)")


def association_handlers(config: Config) -> list:
    """Event handlers that enforce and log who may connect."""
    handlers: list = [(evt.EVT_REJECTED, _handle_rejected)]
    allow_list = AllowList(config.allowed_peers)
    if allow_list:
        handlers.append((evt.EVT_REQUESTED, _handle_requested, [allow_list]))
    return handlers


class GateRequestHandler(RequestHandler):
    """pynetdicom's request handler, with PDUs read in large reads (pdu_socket.py) and
    an association reactor that waits for work instead of polling (reactor_wait.py)."""

    def _create_association(self):
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = PduSocket  # the same object; only its read changes
        reactor_wait.watch(assoc)
        return assoc


class GateServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, with the TLS handshake in the
    connection's thread (bounded by the AE's network timeout) instead of the
    accept loop, failed handshakes logged as refusals, and every accepted
    connection under the gate's limits against hostile peers (peer_limits.py):
    guarded sockets, the pending cap at accept, the negotiation deadline in
    the server's loop; and `GateRequestHandler`'s associations."""

    def __init__(self, *args, limits: PeerLimits, **kwargs):
        self.limits = limits
        super().__init__(*args, request_handler=GateRequestHandler, **kwargs)
        if self.ssl_context is not None:
            # SSLContext.sslsocket_class: wrap_socket then makes guarded TLS sockets
            self.ssl_context.sslsocket_class = GuardedSSLSocket

    def get_request(self):
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True,
                                                         do_handshake_on_connect=False)
        return self.limits.guard(client_socket, address), address

    def service_actions(self) -> None:
        super().service_actions()
        self.limits.expire()

    def process_request_thread(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket):
            before = request.gettimeout()
            try:
                request.settimeout(self.ae.network_timeout or 60)
                request.do_handshake()
                request.settimeout(before)
            except (ssl.SSLEOFError, ConnectionResetError):
                # connected and left without a word: a port probe, not a refusal
                log.info("connection from %s closed before the TLS handshake", printable(client_address[0]))
                self.shutdown_request(request)
                return
            except OSError as exc:  # other ssl.SSLErrors, timeouts
                log.warning("refused connection from %s: TLS handshake failed: %s",
                            printable(client_address[0]), printable(getattr(exc, "reason", None) or exc, 200))
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def start_server(ae: AE, address: tuple[str, int], *, ssl_context: ssl.SSLContext | None,
                 evt_handlers: list, limits: PeerLimits) -> GateServer:
    """`ae.start_server(address, block=False, ...)`, with `GateServer` as the server class."""
    reactor_wait.install()
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=evt_handlers,
                            server_class=GateServer, limits=limits)
    thread = threading.Thread(target=make_target(server.serve_forever), name="angiogate-scp",
                              daemon=True)
    thread.start()
    # As AE.start_server does: the AE counts active associations (for
    # maximum_associations) through its servers, and server.shutdown() removes it.
    ae._servers.append(server)
    return server
