"""Real runs judged as they should be, through `angiogate score --json` with the bundled model.

Two real clips in ../shared/samples (missing fails, as peers.missing says): a whole right coronary run
(satisfactory) and a catheter run without contrast (unsatisfactory). The catheter run is short,
so the `min_duration` header rule holds it by default; with that rule off it must still be held,
by the classifier and the `contrast_arrival` pixel rule, so the check is not only a header rule.
Two clips are a sanity check of the whole path on real pixels, not a clinical validation.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from angiogate.engines.model import BUNDLED_MODEL

RCA = "XA-RCA-96f-30fps-jpeg-baseline.dcm"
CATHETER = "XA-MONO2-8-12x-catheter.dcm"

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason=f"no bundled model ({BUNDLED_MODEL} is absent)")


def _score(files, tmp_path, site: str = "") -> list[dict]:
    args = [sys.executable, "-m", "angiogate.cli", "score", "--json"]
    if site:
        (tmp_path / "site.yaml").write_text(site)
        args += ["--config", str(tmp_path / "site.yaml")]
    scored = subprocess.run(args + [str(f) for f in files], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)  # no promoted model there: model.path auto serves the bundled one
    assert scored.returncode == 0, scored.stderr[-3000:]
    return [json.loads(line) for line in scored.stdout.splitlines() if line.startswith("{")]


def _contrast(result: dict) -> dict:
    return next(r for r in result["rule_results"] if r["rule"] == "contrast_arrival")


def test_the_real_coronary_run_passes_and_the_real_catheter_run_is_held(samples_dir, tmp_path):
    rca, catheter = _score([samples_dir / RCA, samples_dir / CATHETER], tmp_path)
    assert rca["decision"] == "satisfactory", rca["reasons"]
    assert rca["score"] < rca["threshold"] and rca["failed_rules"] == []
    assert _contrast(rca)["passed"]
    assert catheter["decision"] == "unsatisfactory", catheter["reasons"]


def test_the_real_catheter_run_is_held_by_more_than_its_duration(samples_dir, tmp_path):
    """With `min_duration` off the model runs: it and the contrast rule each hold the run."""
    (catheter,) = _score([samples_dir / CATHETER], tmp_path, "rules: {min_duration_s: 0}\n")
    assert catheter["decision"] == "unsatisfactory" and "min_duration" not in catheter["failed_rules"]
    assert catheter["score"] is not None and catheter["score"] >= catheter["threshold"], catheter["reasons"]
    assert catheter["reason_code"] == "contrast_arrival" and not _contrast(catheter)["passed"]
    assert any(reason.startswith("classifier: P(unsatisfactory)=") for reason in catheter["reasons"])
