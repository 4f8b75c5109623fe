"""DICOM TLS when forwarding (per destination) and client certificates bound to
calling AE titles (issue 14 item 12).

Real parts only: certificates made with `openssl` (tests/pki.py), DCMTK
storescp with `+tls` as the TLS destination (it requires a client
certificate by default, `-rc`), DCMTK storescu/echoscu with `+tls` as the
modality, `angiogate serve` as a child process. The inbound TLS handshake
itself is tested in test_security.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from angiogate.config import AllowedPeer, ConfigError, DestinationTls, load_config
from angiogate.dicom import security
from angiogate.dicom.tls import ClientTls, PeerCertificate
from angiogate.forward.sender import SendError, Sender, file_meta_uids
from angiogate.forward.target import Item
from peers import StoreSCP, count_successes, echoscu, storescu, wait_for
from pki import make_pki, sha256_of

SAMPLE = "XA-MONO2-8-12x-catheter.dcm"
REFUSED = "Reason: Calling AE Title Not Recognized"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_storescp(tmp_path, pki):
    """DCMTK storescp speaking only TLS with server.pem, requiring a client certificate from ca.pem."""
    scp = StoreSCP(tmp_path / "tls-storescp", aet="TLSPACS",
                   extra_args=["+tls", str(pki / "server.key"), str(pki / "server.pem"), "+cf", str(pki / "ca.pem")])
    try:
        yield scp.start()
    finally:
        scp.stop()


def _destination_tls(pki: Path, **extra) -> dict:
    return {"enabled": True, "ca_certificates": str(pki / "ca.pem"), "certificate": str(pki / "client.pem"),
            "private_key": str(pki / "client.key")} | extra


def _item(path: Path) -> Item:
    sop_class, syntax = file_meta_uids(path)
    return Item(path, sop_class, syntax)


# ------------------------------------------------------------ configuration

def test_destination_tls_keys_validate_and_name_the_key(tmp_path, pki):
    plain = load_config(destinations=[{"ae_title": "PACS", "host": "10.0.0.1", "port": 104}])
    assert plain.destinations[0].tls.enabled is False  # the default: plain TCP
    site = tmp_path / "site" / "angiogate.yaml"
    (site.parent / "tls").mkdir(parents=True)
    for name in ("ca.pem", "client.pem", "client.key"):
        (site.parent / "tls" / name).write_bytes((pki / name).read_bytes())
    site.write_text(yaml.safe_dump({"destinations": [{
        "ae_title": "PACS", "host": "10.0.0.1", "port": 104,
        "tls": {"enabled": True, "ca_certificates": "tls/ca.pem", "certificate": "tls/client.pem",
                "private_key": "tls/client.key", "server_name": "pacs.example"}}]}))
    tls = load_config(site).destinations[0].tls
    assert tls.ca_certificates == site.parent / "tls" / "ca.pem"  # relative to the site file
    assert (tls.check_hostname, tls.server_name) == (True, "pacs.example")
    for bad, key in [({"enabled": True, "ca_certificates": str(tmp_path / "missing.pem")},
                      "'destinations.0.tls.ca_certificates': Value error, no such file"),
                     ({"enabled": True, "certificate": str(pki / "client.pem")}, "'destinations.0.tls'"),
                     ({"enabled": True, "cafile": "x"}, "'destinations.0.tls.cafile'")]:
        with pytest.raises(ConfigError, match=key):
            load_config(destinations=[{"ae_title": "PACS", "host": "h", "port": 104, "tls": bad}])
    # storage commitment peers are destinations too, paths resolved the same way
    with pytest.raises(ConfigError, match="'storage_commitment.peers.0.tls.certificate'"):
        load_config(storage_commitment={"peers": [{"ae_title": "CATHLAB1", "host": "h", "port": 104, "tls": {
            "enabled": True, "certificate": "nowhere.pem", "private_key": "nowhere.key"}}]})
    # files that exist but cannot be loaded: the gate does not start (ConfigError naming the block)
    with pytest.raises(ConfigError, match=r"destinations\[PACS\].tls.certificate / .*private_key"):
        ClientTls(DestinationTls(**_destination_tls(pki, private_key=str(pki / "client2.key"))), "h",
                  "destinations[PACS].tls")


def test_certificate_bindings_validate_and_need_verified_client_certificates(pki):
    tls = {"enabled": True, "certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key"),
           "ca_certificates": str(pki / "ca.pem")}
    fingerprint = sha256_of(pki / "client2.pem")
    cfg = load_config(tls=tls, allowed_peers=[{"ae_title": "CATHLAB1", "tls_subject": "CN=CATHLAB1, O=Angiogate Test"},
                                              {"ae_title": "CATHLAB2", "cert_sha256": fingerprint}])
    assert cfg.allowed_peers[1].cert_sha256 == fingerprint.replace(":", "").lower()
    for bad, message in [({"ae_title": "A", "cert_sha256": "12:34"}, "'allowed_peers.0.cert_sha256'"),
                         ({"ae_title": "A", "tls_subject": "XX=1"}, "'allowed_peers.0.tls_subject'"),
                         ({"address": "10.0.0.1", "tls_subject": "CATHLAB1"}, "name the ae_title")]:
        with pytest.raises(ConfigError, match=message):
            load_config(tls=tls, allowed_peers=[bad])
    with pytest.raises(ConfigError, match="allowed_peers.0 bind.*needs tls.enabled with tls.ca_certificates"):
        load_config(allowed_peers=[{"ae_title": "CATHLAB1", "tls_subject": "CATHLAB1"}])


def test_allow_list_bindings_match_subject_or_fingerprint():
    lab1 = PeerCertificate(frozenset({("commonName", "CATHLAB1"), ("organizationName", "Angiogate Test")}), "a" * 64)
    lab2 = PeerCertificate(frozenset({("commonName", "CATHLAB2")}), "b" * 64)
    allow = security.AllowList([
        AllowedPeer(ae_title="CATHLAB1", tls_subject="CATHLAB1", address="127.0.0.0/8"),
        AllowedPeer(ae_title="CATHLAB2", cert_sha256="B" * 64),
        AllowedPeer(ae_title="FULL", tls_subject="O=Angiogate Test, CN=CATHLAB1"),
        AllowedPeer(ae_title="PACS"),
        AllowedPeer(address="127.0.0.1"),
    ])
    assert allow.refusal("CATHLAB1", "127.0.0.1", lab1) is None  # CN alone: other attributes may be there
    assert allow.refusal("FULL", "10.9.9.9", lab1) is None  # the whole subject, in another order
    assert "not the one bound" in allow.refusal("FULL", "10.9.9.9", lab2)
    assert allow.refusal("CATHLAB2", "10.9.9.9", lab2) is None
    assert "not the one bound" in allow.refusal("CATHLAB2", "10.9.9.9", lab1)
    assert "CN 'CATHLAB1'" in allow.refusal("CATHLAB2", "10.9.9.9", lab1)
    assert "not the one bound" in allow.refusal("CATHLAB1", "127.0.0.1", lab2)
    # a bound AE title without a certificate is refused, even from an address an address-only entry admits
    assert "none was shown" in allow.refusal("CATHLAB1", "127.0.0.1", None)
    assert "not from this address" in allow.refusal("CATHLAB1", "10.9.9.9", lab1)
    # unbound AE titles are as before: any certificate or none
    assert allow.refusal("PACS", "10.9.9.9", None) is None and allow.refusal("PACS", "10.9.9.9", lab2) is None
    assert allow.refusal("ANYONE", "127.0.0.1", None) is None
    assert "not on the allow-list" in allow.refusal("ANYONE", "10.9.9.9", lab1)


# ------------------------------------------------------------ outbound: the sender

def test_sender_over_tls_to_dcmtk_and_why_it_fails(tls_storescp, pki, samples_dir):
    """Each way TLS can fail is a SendError naming OpenSSL's reason; the right settings deliver."""

    def sender(**settings) -> Sender:
        tls = ClientTls(DestinationTls(**_destination_tls(pki, **settings)), "127.0.0.1", "test")
        return Sender(tls_storescp.aet, "127.0.0.1", tls_storescp.port, calling_ae_title="ANGIOGATE",
                      connect_timeout_s=10, tls=tls)

    item = _item(samples_dir / SAMPLE)
    failures = {
        "foreign CA": sender(ca_certificates=str(pki / "foreign_ca.pem")),
        "host name": sender(server_name="pacs.example"),
        "no client certificate": sender(certificate=None, private_key=None),
        "foreign client certificate": sender(certificate=str(pki / "foreign.pem"),
                                             private_key=str(pki / "foreign.key")),
    }
    reasons = {}
    for what, failing in failures.items():
        with pytest.raises(SendError) as raised:
            failing.send(item)
        assert raised.value.connection, what
        reasons[what] = str(raised.value)
        assert f"association with TLSPACS@127.0.0.1:{tls_storescp.port} failed: TLS with " in reasons[what], reasons
    # storescp sends its CA along: OpenSSL reads "self-signed certificate in certificate chain"
    assert "CERTIFICATE_VERIFY_FAILED: self-signed certificate in certificate chain" in reasons["foreign CA"]
    assert "CERTIFICATE_VERIFY_FAILED: Hostname mismatch" in reasons["host name"]
    assert "ALERT" in reasons["no client certificate"], reasons  # the peer's TLS alert, by name
    assert "ALERT" in reasons["foreign client certificate"], reasons
    assert tls_storescp.received_files() == []
    # the right CA and client certificate; the host name check off, against a certificate for another name
    good = sender()
    assert good.send(item)[0] == 0x0000
    good.close()
    assert sender(server_name="pacs.example", check_hostname=False).send(item)[0] == 0x0000
    assert len(tls_storescp.received_files()) == 2


# ------------------------------------------------------------ outbound: the gate

def test_gate_forwards_over_tls_and_retries_a_failed_handshake(gate_factory, tls_storescp, pki, samples_dir):
    """A destination with the wrong CA: the forward waits with the TLS reason in last_error and is
    retried (no attempt charged); with the CA fixed and the gate restarted, the clip arrives."""
    destination = {"ae_title": tls_storescp.aet, "host": "127.0.0.1", "port": tls_storescp.port,
                   "tls": _destination_tls(pki, ca_certificates=str(pki / "foreign_ca.pem"))}
    settings = {"model": {"path": "none"}, "policies": {"mode": "shadow"}, "destinations": [destination]}
    gate = gate_factory(settings).start()
    out = storescu([samples_dir / SAMPLE], gate.port, aec="ANGIOGATE")
    assert count_successes(out) == 1, out.stdout + out.stderr
    wait_for(lambda: gate.query("SELECT failures FROM forwards WHERE failures >= 2"), 60,
             "two failed tries of the forward", gate)
    [forward] = gate.query("SELECT * FROM forwards")
    assert (forward["status"], forward["attempts"]) == ("pending", 0), forward
    # one event for the first failure; the same error again is counted in forwards.failures only
    assert len(gate.query("SELECT id FROM events WHERE kind = 'forward_failed'")) == 1
    assert "TLS with 127.0.0.1: CERTIFICATE_VERIFY_FAILED: self-signed certificate in certificate chain" in \
        forward["last_error"], forward
    assert "destination TLSPACS@127.0.0.1:" in gate.log_text() and "is unavailable (association with" \
        in gate.log_text()
    assert "Traceback" not in gate.log_text()
    assert tls_storescp.received_files() == []
    gate.stop()
    # the site fixes its CA file; the same forward is sent after the restart
    destination["tls"] = _destination_tls(pki)
    gate.config_path.write_text(yaml.safe_dump(gate.settings | {"destinations": [destination]}))
    gate.start()
    rows = gate.wait_settled(1, timeout=60)
    assert rows[0]["forward_status"] == "forwarded", rows
    [forward] = gate.query("SELECT * FROM forwards")
    assert (forward["status"], forward["attempts"]) == ("sent", 1), forward
    assert len(tls_storescp.received_files()) == 1


# ------------------------------------------------------------ inbound: certificates bound to AE titles

def test_client_certificate_bound_to_calling_ae_title(gate_factory, pki, samples_dir):
    gate = gate_factory({
        "model": {"path": "none"},
        "tls": {"enabled": True, "certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key"),
                "ca_certificates": str(pki / "ca.pem")},
        "allowed_peers": [{"ae_title": "CATHLAB1", "tls_subject": "CATHLAB1"},
                          {"ae_title": "CATHLAB2", "cert_sha256": sha256_of(pki / "client2.pem")},
                          {"ae_title": "TLSSCU"}]}).start()

    def tls_args(name: str) -> list[str]:
        return ["+tls", str(pki / f"{name}.key"), str(pki / f"{name}.pem"), "+cf", str(pki / "ca.pem")]

    # CATHLAB1's certificate (CN=CATHLAB1) calling as CATHLAB1: stored
    out = storescu([samples_dir / SAMPLE], gate.port, aec="ANGIOGATE", aet="CATHLAB1", extra_args=tls_args("client"))
    assert count_successes(out) == 1, out.stdout + out.stderr
    # the same certificate calling as CATHLAB2 (bound to client2 by fingerprint): refused
    out = storescu([samples_dir / SAMPLE], gate.port, aec="ANGIOGATE", aet="CATHLAB2", extra_args=tls_args("client"))
    assert count_successes(out) == 0 and REFUSED in out.stdout + out.stderr, out.stdout + out.stderr
    out = echoscu(gate.port, aec="ANGIOGATE", aet="CATHLAB1", extra_args=tls_args("client2"))
    assert out.returncode != 0 and REFUSED in out.stdout + out.stderr, out.stdout + out.stderr
    # client2 as CATHLAB2, and any certificate of the CA as the unbound TLSSCU: let in
    for aet, name in (("CATHLAB2", "client2"), ("TLSSCU", "client"), ("TLSSCU", "client2")):
        out = echoscu(gate.port, aec="ANGIOGATE", aet=aet, extra_args=tls_args(name))
        assert out.returncode == 0 and "Received Echo Response (Success)" in out.stdout + out.stderr, (aet, out)
    rows = gate.wait_settled(1, timeout=30)
    assert [r["calling_ae_title"] for r in rows] == ["CATHLAB1"]
    def refusals() -> list[str]:
        return [line for line in gate.log_text().splitlines()
                if " WARNING angiogate.dicom.security: refused association" in line and "client certificate" in line]

    lines = wait_for(lambda: len(refusals()) >= 2 and refusals(), 10, "two refusals in the log", gate)
    assert len(lines) == 2, lines
    assert any("AE 'CATHLAB2' at 127.0.0.1" in line and "CN 'CATHLAB1'" in line for line in lines), lines
    assert any("AE 'CATHLAB1' at 127.0.0.1" in line and "CN 'CATHLAB2'" in line for line in lines), lines
    assert all("calling-AE-title-not-recognized" in line for line in lines)


# ------------------------------------------------------------ outbound: storage commitment reports

def test_commitment_report_to_a_peer_over_tls(gate_factory, pki, samples_dir):
    """A storage_commitment.peers entry with tls: the report's new association runs over TLS,
    the gate showing its client certificate. The modality is pynetdicom (DCMTK has no
    Storage Commitment SCU), serving only TLS and requiring a certificate from ca.pem."""
    import ssl

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    from test_storage_commitment import INSTANCE, Reports, _request, _uid_and_class

    shown: list[dict] = []

    def on_report(event):
        shown.append(event.assoc.dul.socket.socket.getpeercert())
        return reports.handler(event)

    modality_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    modality_tls.load_cert_chain(pki / "server.pem", pki / "server.key")
    modality_tls.load_verify_locations(pki / "ca.pem")
    modality_tls.verify_mode = ssl.CERT_REQUIRED
    reports = Reports()
    modality = AE(ae_title="CATHLAB1")
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = modality.start_server(("127.0.0.1", 0), block=False, ssl_context=modality_tls,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        gate = gate_factory({"model": {"path": "none"}, "storage_commitment": {"peers": [{
            "ae_title": "CATHLAB1", "host": "127.0.0.1", "port": server.server_address[1],
            "tls": _destination_tls(pki)}]}}).start()
        out = storescu([samples_dir / SAMPLE], gate.port, aec="ANGIOGATE")
        assert count_successes(out) == 1, out.stdout + out.stderr
        held = [_uid_and_class(samples_dir / SAMPLE)]
        ae = AE(ae_title="CATHLAB1")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", gate.port, ae_title="ANGIOGATE")
        status, _ = assoc.send_n_action(_request(held), 1, StorageCommitmentPushModel, INSTANCE)
        assoc.release()  # the report must come on a new association, to the TLS port
        assert status.Status == 0x0000
        assert reports.arrived.wait(30), gate.log_text()[-3000:]
    finally:
        server.shutdown()
    [(event_type, _)] = reports.received
    assert event_type == 1
    [certificate] = shown
    assert (("commonName", "CATHLAB1"),) in certificate["subject"]  # the gate's client.pem
    assert "on a new association to 127.0.0.1" in gate.log_text()
