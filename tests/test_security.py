"""Never let a stranger in: the AE allow-list, DICOM TLS, secrets and patient
names kept out of the log.

Real peers: DCMTK echoscu/storescu (always through `peers.dcmtk()`, since
pynetdicom's same-named scripts may shadow them on PATH), a pynetdicom SCU,
`angiogate serve` as a child process, a throwaway PostgreSQL. Certificates
are made per module with `openssl` in a temporary folder. Spool-path
sanitising of hostile UIDs is tested in test_spool.py and
test_bad_input.py::test_hostile_uid_stays_inside_the_spool.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from angiogate.config import AllowedPeer, ConfigError, Tls, load_config
from angiogate.dicom import security
from angiogate.dicom.tls import server_ssl_context
from peers import count_successes, echoscu, free_port, storescu
from pki import make_pki

# A-ASSOCIATE-RJ: rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized
REFUSED = (0x01, 0x01, 0x03)
SAMPLE = "XA-MONO2-8-12x-catheter.dcm"


# ------------------------------------------------------------ certificates

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.pem signs server.* and client.*; foreign_ca.pem signs foreign.* (tests/pki.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_settings(pki: Path, **extra) -> dict:
    return {"enabled": True, "certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key"),
            "ca_certificates": str(pki / "ca.pem")} | extra


def _tls_args(pki: Path, key: str = "client") -> list[str]:
    return ["+tls", str(pki / f"{key}.key"), str(pki / f"{key}.pem"), "+cf", str(pki / "ca.pem")]


# ------------------------------------------------------------ helpers

def _pynetdicom_echo(port: int, calling: str, *, source: str = "127.0.0.1", called: str = "ANGIOGATE"):
    """Associate with a pynetdicom SCU; returns (established, (result, source, reason) or None)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))
    try:
        if assoc.is_established:
            status = assoc.send_c_echo()
            return int(status.Status) == 0, None
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            return False, (rj.result, rj.result_source, rj.diagnostic)
        return False, None
    finally:
        if assoc.is_established:
            assoc.release()


def _dcmtk_rejection(out: subprocess.CompletedProcess) -> str:
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Received Echo Response" not in text and "Received Store Response" not in text, text
    return text


def _refusal_lines(gate) -> list[str]:
    return [line for line in gate.log_text().splitlines()
            if " WARNING angiogate.dicom.security: refused " in line]


def _log_once(gate, ready, timeout: float = 5.0) -> str:
    """The gate's log once `ready(log)` holds (a thread may still be writing a line the
    peer's outcome did not wait for); the log as it is after `timeout` otherwise."""
    deadline = time.monotonic() + timeout
    while not ready(text := gate.log_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return text


# ------------------------------------------------------------ unit: the allow-list

def test_allow_list_matching_rules():
    allow = security.AllowList([
        AllowedPeer(ae_title="CATHLAB1", address="10.1.2.0/24"),
        AllowedPeer(ae_title="PACS"),
        AllowedPeer(address="10.9.9.9"),
        AllowedPeer(ae_title="V6", address="fd00::/64"),
    ])
    assert allow.refusal("CATHLAB1", "10.1.2.77") is None
    assert allow.refusal("CATHLAB1  ", "::ffff:10.1.2.77") is None  # padded AE, IPv4-mapped source
    assert "not from this address" in allow.refusal("CATHLAB1", "10.1.3.1")
    assert allow.refusal("PACS", "192.0.2.1") is None  # AE-only entry: from anywhere
    assert allow.refusal("ANYONE", "10.9.9.9") is None  # address-only entry: any AE
    assert allow.refusal("V6", "fd00::5") is None
    assert "not from this address" in allow.refusal("V6", "10.1.2.5")
    assert "not on the allow-list" in allow.refusal("cathlab1", "10.1.2.77")  # exact, case-sensitive
    assert "not on the allow-list" in allow.refusal("STRANGER", "10.1.2.77")
    assert "not on the allow-list" in allow.refusal("STRANGER", "not-an-address")
    assert not security.AllowList([]) and security.AllowList([]).refusal("X", "1.2.3.4") is None


def test_security_config_keys_validate_and_name_the_key(tmp_path):
    cfg = load_config()
    assert cfg.allowed_peers == [] and cfg.tls.enabled is False and cfg.tls.require_client_certificate
    cfg = load_config(allowed_peers=[{"ae_title": "CATHLAB1", "address": "10.1.2.9/24"}])
    assert cfg.allowed_peers[0].address == "10.1.2.0/24"
    for bad, key in [({"allowed_peers": [{}]}, "'allowed_peers.0'"),
                     ({"allowed_peers": [{"address": "10.1.2.300"}]}, "'allowed_peers.0.address'"),
                     ({"allowed_peers": [{"ae_title": "BAD\\AE"}]}, "'allowed_peers.0.ae_title'"),
                     ({"allowed_peers": [{"ae": "X"}]}, "'allowed_peers.0.ae'"),
                     ({"tls": {"enabled": True}}, "'tls'"),
                     ({"tls": {"enable": True}}, "'tls.enable'")]:
        with pytest.raises(ConfigError, match=key):
            load_config(**bad)
    site = tmp_path / "site" / "angiogate.yaml"
    site.parent.mkdir()
    site.write_text("tls: {enabled: true, certificate: tls/gate.pem, private_key: tls/gate.key, "
                    "ca_certificates: /etc/ca.pem}\n")
    tls = load_config(site).tls
    assert tls.certificate == site.parent / "tls" / "gate.pem"  # relative to the site file
    assert tls.ca_certificates == Path("/etc/ca.pem")


def test_server_ssl_context_from_settings(pki):
    required = server_ssl_context(Tls(**_tls_settings(pki), require_client_certificate=True))
    assert required.verify_mode == ssl.CERT_REQUIRED
    assert required.minimum_version >= ssl.TLSVersion.TLSv1_2
    optional = server_ssl_context(Tls(**_tls_settings(pki), require_client_certificate=False))
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ValueError, match="tls.private_key"):
        server_ssl_context(Tls(**_tls_settings(pki, private_key=str(pki / "missing.key")),
                                        require_client_certificate=True))
    with pytest.raises(ValueError, match="tls.certificate"):  # key does not belong to the certificate
        server_ssl_context(Tls(**_tls_settings(pki, private_key=str(pki / "client.key")),
                                        require_client_certificate=True))


# ------------------------------------------------------------ the gate: allow-list

def test_allow_list_refuses_strangers_with_calling_ae_not_recognized(gate_factory, samples_dir):
    gate = gate_factory({"model": {"path": "none"},
                         "allowed_peers": [{"ae_title": "CATHLAB1", "address": "127.0.0.1/32"},
                                           {"ae_title": "REMOTE", "address": "10.1.2.0/24"}]}).start()
    # DCMTK: an unknown calling AE title is refused, with the reason DCMTK prints
    text = _dcmtk_rejection(echoscu(gate.port, aec="ANGIOGATE", aet="STRANGER"))
    assert "Association Rejected" in text
    assert "Result: Rejected Permanent, Source: Service User" in text
    assert "Reason: Calling AE Title Not Recognized" in text
    out = storescu([samples_dir / SAMPLE], gate.port, aec="ANGIOGATE", aet="STRANGER")
    assert count_successes(out) == 0 and "Calling AE Title Not Recognized" in out.stdout + out.stderr
    # the allowed AE from its address gets in
    out = echoscu(gate.port, aec="ANGIOGATE", aet="CATHLAB1")
    assert out.returncode == 0 and "Received Echo Response (Success)" in out.stderr + out.stdout
    # pynetdicom SCU: unknown AE; allowed AE from a wrong address (127.0.0.2); AE allowed elsewhere only
    assert _pynetdicom_echo(gate.port, "STRANGER") == (False, REFUSED)
    assert _pynetdicom_echo(gate.port, "CATHLAB1", source="127.0.0.2") == (False, REFUSED)
    assert _pynetdicom_echo(gate.port, "REMOTE") == (False, REFUSED)
    assert _pynetdicom_echo(gate.port, "CATHLAB1") == (True, None)
    # an allowed AE calling another AE title: pynetdicom's own refusal (reason 7), logged too
    assert _pynetdicom_echo(gate.port, "CATHLAB1", called="NOT_THE_GATE") == (False, (0x01, 0x01, 0x07))
    # nothing from a stranger was kept; each refusal is one WARNING naming AE title and address
    assert gate.verdicts() == []
    lines = _refusal_lines(gate)
    assert len(lines) == 6, gate.log_text()
    assert "'CATHLAB1' at 127.0.0.1 (called 'NOT_THE_GATE')" in lines.pop()
    assert sum("'STRANGER' at 127.0.0.1" in line for line in lines) == 3
    assert any("'CATHLAB1' at 127.0.0.2" in line and "not from this address" in line for line in lines)
    assert any("'REMOTE' at 127.0.0.1" in line for line in lines)
    assert all("calling-AE-title-not-recognized" in line for line in lines)


def test_allow_list_check_fails_closed():
    """EVT_REQUESTED handler errors are only logged by pynetdicom, which then
    accepts: a check that breaks must refuse instead."""

    class Broken(security.AllowList):
        def refusal(self, ae_title, address):
            raise RuntimeError("broken check")

    ae = AE(ae_title="ANGIOGATE")
    ae.add_supported_context(Verification)
    server = security.start_server(ae, ("127.0.0.1", free_port()), ssl_context=None, evt_handlers=[
        (evt.EVT_REQUESTED, security._handle_requested, [Broken([AllowedPeer(ae_title="X")])])])
    try:
        # rejected-transient, service-user, no reason given
        assert _pynetdicom_echo(server.server_address[1], "CATHLAB1") == (False, (0x02, 0x01, 0x01))
    finally:
        server.shutdown()


# ------------------------------------------------------------ the gate: TLS

def test_tls_gate_with_dcmtk(gate_factory, pki, samples_dir):
    gate = gate_factory({"model": {"path": "none"}, "tls": _tls_settings(pki)}).start()
    assert "(TLS, client certificate required;" in gate.log_text()
    # a client certificate from the gate's CA: echo and store succeed, the verdict row appears
    out = echoscu(gate.port, aec="ANGIOGATE", aet="TLSSCU", extra_args=_tls_args(pki))
    assert out.returncode == 0 and "Received Echo Response (Success)" in out.stdout + out.stderr, out
    out = storescu([samples_dir / SAMPLE], gate.port, aec="ANGIOGATE", aet="TLSSCU", extra_args=_tls_args(pki))
    assert count_successes(out) == 1, out.stdout + out.stderr
    rows = gate.wait_settled(1, timeout=30)
    assert len(rows) == 1 and rows[0]["calling_ae_title"] == "TLSSCU" and rows[0]["status"] == "judged"
    # no client certificate (anonymous TLS), a certificate from a foreign CA, plain TCP: all fail
    anonymous = echoscu(gate.port, aec="ANGIOGATE", aet="TLSSCU", extra_args=["+tla", "+cf", str(pki / "ca.pem")])
    foreign = echoscu(gate.port, aec="ANGIOGATE", aet="TLSSCU", extra_args=_tls_args(pki, "foreign"))
    plain = echoscu(gate.port, aec="ANGIOGATE", aet="TLSSCU")
    for out in (anonymous, foreign, plain):
        # DCMTK reads "Peer aborted Association" or "TCP I/O Error (Broken pipe)", by timing
        assert "Association Request Failed" in _dcmtk_rejection(out)
    # each failed handshake is a WARNING with the source address and OpenSSL's reason
    # (TLS alerts reach the client before the gate's thread writes its line: wait for it)
    _log_once(gate, lambda log: log.count("TLS handshake failed") >= 3)
    refused = [line for line in _refusal_lines(gate) if "TLS handshake failed" in line]
    assert sorted(line.rsplit(": ", 1)[1] for line in refused) == [
        "CERTIFICATE_VERIFY_FAILED", "PEER_DID_NOT_RETURN_A_CERTIFICATE", "WRONG_VERSION_NUMBER"], gate.log_text()
    assert all("from 127.0.0.1" in line for line in refused)
    # the gate still serves
    assert echoscu(gate.port, aec="ANGIOGATE", aet="TLSSCU", extra_args=_tls_args(pki)).returncode == 0
    assert len(gate.verdicts()) == 1


def test_silent_client_does_not_block_tls_handshakes(pki):
    """pynetdicom's stock server handshakes in its accept loop without a timeout,
    so one connection that never speaks would lock every sender out."""
    cfg = load_config(tls=_tls_settings(pki), network_timeout_s=30)
    ae = AE(ae_title="ANGIOGATE")
    ae.add_supported_context(Verification)
    ae.network_timeout = cfg.network_timeout_s
    server = security.start_server(ae, ("127.0.0.1", free_port()), ssl_context=server_ssl_context(cfg.tls),
                                   evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)])
    port = server.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port)) as silent:
            time.sleep(0.2)  # the silent connection is accepted first
            out = echoscu(port, aec="ANGIOGATE", aet="TLSSCU", extra_args=_tls_args(pki), timeout=20)
            assert out.returncode == 0, out.stdout + out.stderr
            # Served while the silent connection was still held (order, not a time bound
            # that load can break): the server has not dropped it, so the echo did not wait
            # for its 30 s network timeout.
            silent.setblocking(False)
            try:
                dropped = silent.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                dropped = False
            assert not dropped, "the silent connection was dropped before the echo was served"
    finally:
        server.shutdown()
    assert server not in ae._servers  # shut down the way AE.start_server's servers are


# ------------------------------------------------------------ secrets and patient data

def test_password_and_patient_name_never_logged(gate_factory, postgres_url, samples_dir, tmp_path, monkeypatch):
    from pydicom import dcmread

    password, patient = "s3cret-XYZ", "Quixotic^Zebulon^Testpatient"
    monkeypatch.setenv("ANGIOGATE_DB_PASSWORD", password)  # inherited by the gate process
    # the gate really is given the password (the URL it connects with carries it) ...
    assert password in load_config(database_url=postgres_url).database_url_with_password()
    clip = dcmread(samples_dir / SAMPLE)
    clip.PatientName, clip.PatientID = patient, "SEC-TEST-1"
    clip.save_as(tmp_path / "named.dcm")
    gate = gate_factory({"model": {"path": "none"}, "database_url": postgres_url, "log_level": "INFO"}).start()
    out = storescu([tmp_path / "named.dcm"], gate.port, aec="ANGIOGATE")
    assert count_successes(out) == 1, out.stdout + out.stderr
    rows = gate.wait_settled(1, timeout=30)
    assert rows[0]["patient_id"] == "SEC-TEST-1"
    # ... and neither it nor the patient's name is in the log (nor any part of the name)
    log = _log_once(gate, lambda log: f"judged {clip.SOPInstanceUID}" in log)
    assert f"received {clip.SOPInstanceUID} from STORESCU" in log and f"judged {clip.SOPInstanceUID}" in log
    assert password not in log
    for part in ("Quixotic", "Zebulon", "Testpatient"):
        assert part not in log
