"""What deploy/ ships: the install script, the image, the compose trial, the unit.

Base images cannot be pulled here, so the image is not built: its install
steps are one script (deploy/install.sh) that runs here in a throwaway venv,
and the Dockerfile, compose file and systemd unit are checked for the
structure a PACS team relies on (ports, volumes, health checks, the site
files they name load as valid configs, every folder the gate writes is
writable under the unit).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from angiogate.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ROOT = DEPLOY.parent


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.slow
def test_install_script_makes_a_working_venv(tmp_path):
    """deploy/install.sh as the image runs it, in a throwaway venv (reusing the wheels
    already installed here; only the build backend may come from the index)."""
    venv = tmp_path / "venv"
    env = os.environ | {"ANGIOGATE_VENV": str(venv), "ANGIOGATE_VENV_ARGS": "--system-site-packages",
                        "PYTHON": sys.executable}
    done = subprocess.run(["sh", str(DEPLOY / "install.sh"), str(ROOT)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"angiogate installed in {venv}" in done.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import angiogate; print(angiogate.__file__)"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the venv's copy, not this checkout's
    checked = subprocess.run([str(venv / "bin" / "angiogate"), "check-config",
                              "--config", str(DEPLOY / "container.yaml")],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["spool_dir"] == "/var/lib/angiogate/spool"
    bundled = venv.glob("lib/python*/site-packages/angiogate/models/default.pt")
    assert next(bundled, None) is not None, "the bundled model is not in the installed package"


def test_install_script_refuses_an_old_python(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\n[ \"$1\" = -V ] && { echo 'Python 3.10.12'; exit 0; }\nexit 1\n")
    old.chmod(0o755)
    done = subprocess.run(["sh", str(DEPLOY / "install.sh"), str(ROOT)], capture_output=True, text=True,
                          env=os.environ | {"PYTHON": str(old), "ANGIOGATE_VENV": str(tmp_path / "v")}, timeout=60)
    assert done.returncode == 2
    assert "needs Python 3.11 or newer" in done.stderr and "3.10.12" in done.stderr
    assert not (tmp_path / "v").exists()


def test_dockerfile_installs_with_the_script_and_runs_unprivileged():
    steps = _dockerfile_instructions()
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "/src/deploy/install.sh /src" in runs  # one place for the install steps
    assert "download.pytorch.org/whl/cpu" in " ".join(arg for op, arg in steps if op == "ENV")
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:3.11-slim") for f in froms)
    assert ("USER", "angiogate") in steps
    site_copy = next(arg for op, arg in steps if op == "COPY" and "container.yaml" in arg)
    site = load_config(ROOT / site_copy.split()[0])
    assert ("EXPOSE", str(site.port)) in steps
    assert site.bind_address == "0.0.0.0" and str(site.spool_dir).startswith("/var/lib/angiogate/")
    assert ("VOLUME", '["/var/lib/angiogate"]') in steps
    health = next(arg for op, arg in steps if op == "HEALTHCHECK")
    assert f"127.0.0.1:{site.web.port}/health/ready" in health and site.web.enabled
    assert ("EXPOSE", str(site.web.port)) in steps
    entry = next(arg for op, arg in steps if op == "ENTRYPOINT")
    assert "umask 0027" in entry and "exec angiogate" in entry


def test_compose_runs_gate_postgres_and_orthanc_wired_together():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"gate", "db", "orthanc"}
    gate, db, orthanc = services["gate"], services["db"], services["orthanc"]
    assert gate["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / gate["build"]["context"] / gate["build"]["dockerfile"]).is_file()
    assert gate["depends_on"]["db"]["condition"] == "service_healthy"
    assert "healthcheck" in gate and "healthcheck" in db
    assert f"127.0.0.1:{load_config(DEPLOY / 'compose-site.yaml').web.port}/health/ready" in " ".join(
        gate["healthcheck"]["test"])
    # the site file the gate is started with: valid, and pointing at the other two services
    mount = next(v for v in gate["volumes"] if "compose-site.yaml" in v)
    host_file, in_container = mount.split(":")[:2]
    assert in_container in gate["command"]
    site = load_config(DEPLOY / host_file)
    assert site.database_url.startswith("postgresql+psycopg://angiogate@db:")
    orthanc_config = json.loads(orthanc["environment"]["ORTHANC_JSON"])
    [destination] = site.destinations
    assert (destination.ae_title, destination.host, destination.port) == (
        orthanc_config["DicomAet"], "orthanc", orthanc_config["DicomPort"])
    assert db["environment"]["POSTGRES_DB"] == "angiogate" and db["environment"]["POSTGRES_USER"] == "angiogate"
    # state in named volumes, the DICOM port published, the password never in the file
    volumes = set(compose["volumes"])
    assert {v.split(":")[0] for v in gate["volumes"]} & volumes and {v.split(":")[0] for v in db["volumes"]} & volumes
    assert any(p.split(":")[-1] == str(site.port) for p in gate["ports"])
    assert gate["environment"]["ANGIOGATE_DB_PASSWORD"].startswith("${ANGIOGATE_DB_PASSWORD")
    assert "password" not in site.database_url.lower()


def test_systemd_unit_keeps_every_written_folder_writable():
    unit = dict(line.split("=", 1) for line in (DEPLOY / "angiogate.service").read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    assert unit["UMask"] == "0027" and unit["ProtectSystem"] == "strict"
    writable = [Path(p) for p in unit["ReadWritePaths"].split()]
    config_path = unit["ExecStart"].split("--config", 1)[1].strip()
    assert unit["ExecStart"].startswith("/opt/angiogate/bin/angiogate serve")  # install.sh's default venv
    site = load_config(DEPLOY / "site.example.yaml")
    written = [site.spool_dir, site.outbox_dir, Path(site.model.promoted_path).parent, Path(site.model.export_dir),
               Path(site.web.secret_key_file).parent, Path(site.web.cache_dir)]
    for folder in written:
        assert any(Path(folder).is_relative_to(w) for w in writable), (folder, writable, config_path)
