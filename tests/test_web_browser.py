"""The review app in a real browser, against a real gate and a real downstream.

`angiogate serve` runs as a child (tiny model, threshold 0.99, so the
header rules hold the phantom ventriculograms, aortograms and grafts), DCMTK
storescu pushes phantoms into it, DCMTK storescp is the downstream AE.
Headless Chromium from Debian's packages, driven by Selenium through
Debian's chromedriver, logs in, filters, opens a held clip, labels it, makes
a heat map, releases the clip, and storescp receives it.

Screenshots of the list and clip pages go to the test's folder, and to
$ANGIOGATE_SCREENSHOTS_DIR when set (the README's docs/review_*.png were
made so).

Shadow mode is here too: the same gate with `policies.mode: shadow`
forwards every clip while still recording each verdict.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pydicom

from peers import count_successes, missing, need, storescu, wait_for as _wait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "correct horse battery"


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
    except ImportError:
        missing("selenium is not installed (pip install -e '.[dev]')")
    need(CHROMIUM.exists() and CHROMEDRIVER.exists(),
         "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1500,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver, element_id: str) -> str:
    """The text of the element with that id, '' while the page that has it is still loading."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.ID, element_id).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    target = os.environ.get("ANGIOGATE_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def _start_gate(gate_factory, storescp, tiny_checkpoint, **settings):
    return gate_factory({"model": {"path": str(tiny_checkpoint), "threshold": 0.99},
                         "destinations": [{"ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}]}
                        | settings).start()


def test_review_in_a_browser_label_release_and_downstream_receives(gate_factory, storescp, phantoms,
                                                                    tiny_checkpoint, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows]
    gate = _start_gate(gate_factory, storescp, tiny_checkpoint)
    assert f"review app: {gate.web_url}/" in gate.log_text()
    assert count_successes(storescu(files, gate.port, aec="ANGIOGATE", timeout=180)) == len(files)
    verdicts = gate.wait_settled(len(files), timeout=240)
    held = {v["id"]: v for v in verdicts if v["forward_status"] == "held"}
    assert held, "the header rules hold the phantom ventriculograms, aortograms and grafts"
    out = subprocess.run([sys.executable, "-m", "angiogate", "user", "add", "dr-review", "--password-stdin",
                          "--config", str(gate.config_path)], input=PASSWORD + "\n", capture_output=True,
                         text=True, timeout=120, cwd=gate.work_dir)
    assert out.returncode == 0, out.stderr

    # Log in (the list asks for it first).
    browser.get(gate.web_url + "/verdicts")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "name").send_keys("dr-review")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    browser.find_element(By.ID, "login").click()
    _wait(lambda: "Wrong name or password" in _text(browser, "login-error"), 20, "the login error")
    browser.find_element(By.ID, "name").clear()
    browser.find_element(By.ID, "name").send_keys("dr-review")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    _wait(lambda: browser.current_url.endswith("/verdicts"), 20, "the verdict list after login")
    assert browser.find_element(By.ID, "whoami").text == "dr-review"
    assert browser.find_element(By.ID, "total").text == f"{len(files)} clip(s)"
    _screenshot(browser, tmp_path, "review_list.png")

    # Filter: held clips only.
    Select(browser.find_element(By.ID, "f-forward")).select_by_value("held")
    browser.find_element(By.ID, "apply-filters").click()
    _wait(lambda: "forward_status=held" in browser.current_url, 20, "the filtered list")
    assert browser.find_element(By.ID, "total").text == f"{len(held)} clip(s)"
    listed = {int(a.text) for a in browser.find_elements(By.CSS_SELECTOR, "a.clip-link")}
    assert listed == set(held)
    for a in browser.find_elements(By.CSS_SELECTOR, "a[href]"):
        href = a.get_attribute("href")
        assert not any(v["sop_instance_uid"] in href or (v["patient_id"] or "\0") in href for v in verdicts)

    # Open a held clip: the animated preview and the sampled frames load.
    clip_id = min(held)
    browser.find_element(By.CSS_SELECTOR, f"a.clip-link[href='/clips/{clip_id}']").click()
    _wait(lambda: browser.current_url.endswith(f"/clips/{clip_id}"), 20, "the clip page")
    for image in ("preview", "sampled"):
        _wait(lambda: browser.execute_script(
            f"const i = document.getElementById('{image}'); return i.complete && i.naturalWidth > 0;"),
            60, f"the {image} image")
    assert browser.find_element(By.ID, "forward-status").text == "held"
    assert "FAIL" in browser.find_element(By.ID, "rules").text  # the rule that held it

    # Label it, with a reason and a note.
    browser.find_element(By.ID, "label-unsatisfactory").click()
    Select(browser.find_element(By.ID, "label-reason")).select_by_value("non_coronary")
    browser.find_element(By.ID, "label-note").send_keys("ventriculogram")
    browser.find_element(By.ID, "save-label").click()
    _wait(lambda: "labelled 1 clip" in _text(browser, "message"), 20, "the label message")
    assert "unsatisfactory" in browser.find_element(By.ID, "current-label").text
    label = gate.query("SELECT label, reason, reviewer, note FROM labels")
    assert label == [{"label": "unsatisfactory", "reason": "non_coronary", "reviewer": "dr-review",
                      "note": "ventriculogram"}]

    # The heat map of the serving checkpoint, made on demand.
    browser.find_element(By.ID, "make-heatmap").click()
    _wait(lambda: browser.execute_script(
        "const i = document.getElementById('heatmap'); return i && i.complete && i.naturalWidth > 0;"),
        120, "the heat map")
    _screenshot(browser, tmp_path, "review_clip.png")

    # Release it (the page asks to confirm) and see the downstream receive it.
    uid = held[clip_id]["sop_instance_uid"]
    assert uid not in {_uid(p) for p in storescp.received_files()}
    browser.find_element(By.ID, "release").click()
    browser.switch_to.alert.accept()
    _wait(lambda: "released 1 clip" in _text(browser, "message"), 20, "the release message")
    _wait(lambda: uid in {_uid(p) for p in storescp.received_files()}, 60, "storescp to receive the released clip")
    row = gate.query("SELECT released_by, forward_status FROM verdicts WHERE id = :id", id=clip_id)[0]
    assert row["released_by"] == "dr-review"
    _wait(lambda: gate.query("SELECT forward_status FROM verdicts WHERE id = :id", id=clip_id)[0]["forward_status"]
          == "forwarded", 30, "the verdict to say forwarded")
    browser.refresh()
    assert browser.find_element(By.ID, "forward-status").text == "forwarded"
    assert "released" in browser.find_element(By.ID, "events").text
    assert "dr-review" in browser.find_element(By.ID, "released-by").text
    # The log names the reviewer and the row id, not the clip's UID.
    assert "web: dr-review, clip of clip #" in gate.log_text()
    assert not any(uid in line for line in gate.log_text().splitlines() if "angiogate.web" in line)


def test_shadow_mode_forwards_everything_and_records_every_verdict(gate_factory, storescp, phantoms,
                                                                   tiny_checkpoint, tmp_path):
    import httpx

    phantom_dir, rows = phantoms
    files = [phantom_dir / r["file"] for r in rows]
    gate = _start_gate(gate_factory, storescp, tiny_checkpoint, policies={"mode": "shadow"})
    assert "SHADOW MODE" in gate.log_text()
    assert count_successes(storescu(files, gate.port, aec="ANGIOGATE", timeout=180)) == len(files)
    verdicts = gate.wait_settled(len(files), timeout=240)
    decisions = {v["decision"] for v in verdicts}
    assert "unsatisfactory" in decisions and "satisfactory" in decisions  # verdicts as in enforce mode
    assert {v["forward_status"] for v in verdicts} == {"forwarded"}
    assert {_uid(p) for p in storescp.received_files()} == {v["sop_instance_uid"] for v in verdicts}

    # Health and metrics answer without a login, from the running gate.
    with httpx.Client(base_url=gate.web_url, timeout=30) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        metrics = client.get("/metrics").text
        sent = [line for line in metrics.splitlines() if line.startswith("angiogate_forwards{") and 'status="sent"' in line]
        assert len(sent) == 1 and sent[0].endswith(f" {float(len(files))}"), sent
        assert 'angiogate_worker_alive{worker="judge"} 1.0' in metrics
        assert "angiogate_serving_model_info{" in metrics
        # Reviewers label two clips; the agreement page (behind the login) compares them per model.
        for verdict, label in ((verdicts[0], "satisfactory"), (verdicts[-1], "unsatisfactory")):
            out = subprocess.run([sys.executable, "-m", "angiogate", "label", verdict["sop_instance_uid"],
                                  "--label", label, "--by", "dr-shadow", "--config", str(gate.config_path)],
                                 capture_output=True, text=True, timeout=120, cwd=gate.work_dir)
            assert out.returncode == 0, out.stderr
        assert client.get("/agreement", follow_redirects=True).url.path == "/login"
        subprocess.run([sys.executable, "-m", "angiogate", "user", "add", "dr-shadow", "--password-stdin",
                        "--config", str(gate.config_path)], input=PASSWORD + "\n", text=True, timeout=120,
                       cwd=gate.work_dir, check=True, capture_output=True)
        import re

        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"name": "dr-shadow", "password": PASSWORD, "csrf_token": token})
        page = client.get("/agreement")
        assert page.status_code == 200 and "<b>shadow</b> mode" in page.text
        assert f"{len(files)} clip(s) judged, 2 labelled" in page.text
