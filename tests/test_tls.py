"""DICOM TLS when forwarding, per destination (issue 14 item 12).

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

from angiogate.config import ConfigError, DestinationTls, load_config
from angiogate.dicom.tls import ClientTls
from angiogate.forward.sender import SendError, Sender, file_meta_uids
from angiogate.forward.target import Item
from peers import StoreSCP, count_successes, storescu, wait_for
from pki import make_pki

SAMPLE = "XA-MONO2-8-12x-catheter.dcm"


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
    wait_for(lambda: len(gate.query("SELECT id FROM events WHERE kind = 'forward_failed'")) >= 2, 60,
             "two failed tries of the forward", gate)
    [forward] = gate.query("SELECT * FROM forwards")
    assert (forward["status"], forward["attempts"]) == ("pending", 0), forward
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
