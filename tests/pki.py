"""Throwaway certificates for TLS tests, made with the `openssl` command in a folder.

Keys are unencrypted RSA 2048, valid for two days. `make_pki(folder)` makes
the set the TLS tests share:
- ca.pem / ca.key: the test CA; foreign_ca.pem: another CA nobody trusts.
- server.pem / server.key: CN and subjectAltName IP 127.0.0.1 (and DNS
  localhost), signed by ca.
- named.pem / named.key: subjectAltName DNS pacs.example only, signed by ca
  (for host name checks).
- client.pem / client.key: CN=CATHLAB1, O=Angiogate Test, signed by ca.
- client2.pem / client2.key: CN=CATHLAB2, signed by ca.
- foreign.pem / foreign.key: CN=CATHLAB1, signed by foreign_ca.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
from pathlib import Path

from peers import need


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-noenc", "-keyout", f"{name}.key",
            "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=angiogate test {name}", cwd=folder)


def make_leaf(folder: Path, name: str, ca: str, subject: str, san: str = "IP:127.0.0.1") -> None:
    openssl("req", "-newkey", "rsa:2048", "-noenc", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject, cwd=folder)
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


def make_pki(folder: Path) -> Path:
    """The certificate set described above, in `folder`; a missing openssl is a missing peer."""
    need(shutil.which("openssl"), "openssl not installed (apt-get install openssl)")
    make_ca(folder, "ca")
    make_ca(folder, "foreign_ca")
    make_leaf(folder, "server", "ca", "/CN=127.0.0.1", san="IP:127.0.0.1,DNS:localhost")
    make_leaf(folder, "named", "ca", "/CN=pacs.example", san="DNS:pacs.example")
    make_leaf(folder, "client", "ca", "/CN=CATHLAB1/O=Angiogate Test")
    make_leaf(folder, "client2", "ca", "/CN=CATHLAB2")
    make_leaf(folder, "foreign", "foreign_ca", "/CN=CATHLAB1")
    return folder


def sha256_of(pem: Path) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as `openssl x509 -fingerprint -sha256` prints it."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))
