"""A quick start (issue 16, item 2): `angiogate score FILE` on OpenVINO never imports torch.

torch costs about 3 s to import on this 2-core machine, half the old start;
nor does it load the parts of pydicom and openvino that serving never uses
(`angiogate/lean_imports.py`), and it ends its process itself once the
verdicts are out, but only when it is the process's CLI.
`python -X importtime` lists every module the process imported, so the test
reads the real import graph of the command, not a mock of it. (How long it
takes is `angiogate bench`'s business, not a test's.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("openvino")

from angiogate.engines import exports  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)


def _score(site: Path, clip: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "angiogate", "score", str(clip),
                             "--config", str(site)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    return result, set(IMPORTED.findall(result.stderr))


@pytest.fixture
def served(tiny_checkpoint, tmp_path) -> Path:
    """The tiny checkpoint with its OpenVINO fp32 export made, as a gate has it after its first start."""
    checkpoint = tmp_path / "model" / "tiny.pt"
    checkpoint.parent.mkdir()
    shutil.copyfile(tiny_checkpoint, checkpoint)
    exports.ensure_fp32(checkpoint, None)
    return checkpoint


def _site(tmp_path: Path, checkpoint: Path, **model) -> Path:
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"model": {"path": str(checkpoint), **model}}))
    return site


def test_score_on_openvino_answers_without_importing_torch(served, phantoms, tmp_path):
    phantom_dir, rows = phantoms
    clip = phantom_dir / next(r["file"] for r in rows if r["label"] == "satisfactory")  # the model scores it
    result, modules = _score(_site(tmp_path, served), clip, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on openvino-cpu-fp32" in result.stderr
    assert re.match(r"^(satisfactory|unsatisfactory|error)\s+\d\.\d{3}\s+" + re.escape(str(clip)), result.stdout)
    assert "angiogate.engines.openvino_engine" in modules  # the list is real: the engine's module is in it
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, "torch was imported"
    assert "sqlalchemy" not in modules  # the verdict log is never opened by `score`
    # extras of pydicom and openvino that serving never uses (lean_imports.py): asked for, refused, never loaded
    assert not {m for m in modules if m.startswith(("_gdcm", "requests.", "urllib3", "charset_normalizer", "tqdm.",
                                                    "openvino.tools.ovc.", "openvino_telemetry"))}


def test_score_on_torch_still_imports_it(served, phantoms, tmp_path):
    """The check above can fail: the same command with the torch engine imports torch."""
    phantom_dir, rows = phantoms
    result, modules = _score(_site(tmp_path, served, engine="torch"), phantom_dir / rows[0]["file"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on torch-cpu" in result.stderr and "torch" in modules


_DECODERS = """
import sys
from pydicom.pixels.decoders import base
print(sorted((str(uid), (entry[0] if isinstance(entry, tuple) else entry).available_plugins)
             for uid, entry in base._PIXEL_DATA_DECODERS.items()))
print(sorted(m for m in ("gdcm", "requests", "tqdm") if m in sys.modules))
"""


def test_the_lean_pydicom_import_leaves_the_judge_the_same_decoders():
    """Hiding gdcm, requests and tqdm while pydicom is imported changes no decoder the judge can use,
    and leaves them importable afterwards."""
    lean = "from angiogate.lean_imports import import_pydicom; import_pydicom(); "
    runs = {}
    for name, first in (("plain", ""), ("lean", lean)):
        result = subprocess.run([sys.executable, "-c", first + "import angiogate.clip.decode" + _DECODERS],
                                capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = result.stdout.splitlines()
    assert runs["lean"][0] == runs["plain"][0]
    assert runs["lean"][1] == "[]" and runs["plain"][1] == "['gdcm', 'requests', 'tqdm']"
    after = subprocess.run([sys.executable, "-c", lean + "import gdcm, requests, tqdm"], capture_output=True, text=True,
                           timeout=300, cwd=ROOT)
    assert after.returncode == 0, after.stderr[-3000:]


def test_score_called_in_process_returns_to_its_caller(samples_dir, tmp_path):
    """`score` ends its own process early (no teardown) only when that process is the CLI;
    run in-process (typer's CliRunner) it returns, and the caller goes on."""
    site = tmp_path / "site.yaml"
    site.write_text("model: {path: none}\n")
    code = ("from typer.testing import CliRunner; from angiogate.cli import app; "
            f"result = CliRunner().invoke(app, ['score', '--config', {str(site)!r}, "
            f"{str(samples_dir / 'XA1_UNC.dcm')!r}]); "
            "print('returned', result.exit_code, result.stdout.split()[0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "returned 0 not_applicable"


def test_an_export_is_still_made_after_serving_imported_openvino_without_its_converter(tiny_checkpoint, tmp_path):
    """The engine imports openvino without `openvino.tools.ovc`; making an fp32 export afterwards
    (the gate does, in the background) imports the converter itself."""
    checkpoint = tmp_path / "tiny.pt"
    shutil.copyfile(tiny_checkpoint, checkpoint)
    code = ("import sys; import angiogate.engines.openvino_engine; "
            "print('openvino.tools.ovc' in sys.modules); "
            "from angiogate.engines import exports; "
            f"print(exports.ensure_fp32({str(checkpoint)!r}, None).passed)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "True"]
