"""The service's page in a real headless browser (issue 13, item 5): Debian's chromium,
driven through Debian's chromedriver by Selenium.  Nothing downloads a browser: both paths
are given, and Selenium Manager is told to stay offline.

* Against a stub of the service (seconds): the upload form queues a job, the page follows
  it to DONE by itself (its script re-reads the page), signing in shows identifiers, and a
  ``<script>`` from the PACS is shown as text and never runs.
* Against ``pacsman serve`` as a real subprocess with Orthanc: a query file submitted
  through the form is retrieved and the job ends DONE on the page.

Each test saves a screenshot in its temporary folder and prints the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pacsman.jobstore.jobs import JobState
from pacsman.testing.net import free_port
from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.service import ServiceProcess
from tests.conftest import require_peer
from tests.helpers import write_config, write_queryfile
from tests.test_service_http import PID, TOKEN, XSS, plant_job, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless chromium (as root it needs --no-sandbox)."""
    found = CHROMIUM.is_file() and CHROMEDRIVER.is_file()
    require_peer(found, f"{CHROMIUM} and {CHROMEDRIVER}", "apt install chromium chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _submit_form(driver: WebDriver, url: str, queryfile: Path, *, name: str) -> int:
    """Fill in the upload form (file, save, name) and send it; the job's id from where the
    browser lands."""
    driver.get(url + "/")
    driver.find_element(By.ID, "file").send_keys(str(queryfile))
    driver.find_element(By.ID, "save").click()
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 15).until(lambda d: "/jobs/" in d.current_url)
    return int(driver.current_url.rstrip("/").rsplit("/", 1)[1])


def _wait_for_state(driver: WebDriver, state: str, timeout: float) -> None:
    """Wait (bounded) until the page, refreshing itself, shows the job ``state``."""
    # The page replaces its live parts as it refreshes: an element found may go stale.
    waiting = WebDriverWait(
        driver, timeout, poll_frequency=0.25, ignored_exceptions=(StaleElementReferenceException,)
    )
    waiting.until(
        lambda d: d.find_element(By.ID, "job-state").text == state,
        message=f"the page did not show {state} within {timeout} s",
    )


def _screenshot(driver: WebDriver, path: Path) -> Path:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _no_alert(driver: WebDriver) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018 - raises when no script opened one
    except NoAlertPresentException:
        return True
    return False


def test_the_form_queues_a_job_and_the_page_follows_it(tmp_path: Path, browser: WebDriver) -> None:
    """Submit through the form; the job's page shows it QUEUED, then (settled in the store,
    as the service would) DONE without a reload by hand."""
    queryfile = write_queryfile(tmp_path, "PatientID,StudyDate\nP001,20240101\n", "cohort.csv")
    with serving(tmp_path / "service") as running:
        job_id = _submit_form(browser, running.url, queryfile, name="browser cohort")
        job = running.view.store.job(job_id)
        assert (job.name, job.options.save, job.source) == ("browser cohort", True, "http")
        assert browser.find_element(By.ID, "job-state").text == "QUEUED"
        store = running.view.store
        store.claim_job("head")
        store.settle_job(job_id, JobState.DONE, "")
        _wait_for_state(browser, "DONE", timeout=20)
        browser.get(running.url + "/")
        row = browser.find_element(By.ID, f"job-{job_id}")
        assert "DONE" in row.text
        assert "browser cohort" in row.text
        _screenshot(browser, tmp_path / "jobs-page.png")


def test_signed_in_the_page_shows_identifiers_and_pacs_text_never_runs(
    tmp_path: Path, browser: WebDriver
) -> None:
    """Without signing in, no PatientID; signed in with the token, the PatientID, and a
    ``<script>`` planted in a StudyDescription shown as text, no alert."""
    with serving(tmp_path / "service") as running:
        job = plant_job(running.view.store, tmp_path)
        browser.get(f"{running.url}/jobs/{job.id}")
        assert PID not in browser.page_source
        browser.find_element(By.LINK_TEXT, "sign in").click()
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "sign-in").click()
        WebDriverWait(browser, 15).until(lambda d: d.current_url.endswith(f"/jobs/{job.id}"))
        rows = browser.find_element(By.ID, "rows").text
        assert PID in rows
        assert f"Brain {XSS}" in rows  # the text of the page: shown, not run
        assert _no_alert(browser)
        assert browser.execute_script("return window.pwned === undefined")
        _screenshot(browser, tmp_path / "job-page-signed-in.png")


# -- end to end: pacsman serve with Orthanc -------------------------------------------------------


@pytest.fixture
def service_config(tmp_path: Path, demo_orthanc: OrthancServer) -> Path:
    """A config for ``pacsman serve`` against the demo Orthanc (which knows its SCP)."""
    scp = free_port()
    # The entry every test of the session uses for AE PACSMAN: a second entry with that AE
    # would leave Orthanc moving to the first one, an earlier test's closed port.
    demo_orthanc.add_modality("pacsman", "PACSMAN", "127.0.0.1", scp)
    serve = f"serve:\n  node_name: browser\n  min_free_gb: 0\n  http:\n    port: {free_port()}\n"
    return write_config(
        tmp_path,
        port=demo_orthanc.dicom_port,
        called_ae_title=demo_orthanc.ae_title,
        local_port=scp,
        extra=serve,
    )


def test_a_file_submitted_in_the_browser_is_retrieved_by_pacsman_serve(
    tmp_path: Path, browser: WebDriver, service_config: Path
) -> None:
    """The whole way: the form, the real service, Orthanc; the page shows the job DONE with
    every series retrieved."""
    queryfile = write_queryfile(tmp_path, "PatientID\nDEMO001\n", "demo.csv")
    port = _http_port(service_config)
    with ServiceProcess(service_config) as process:
        process.wait_ready()
        url = f"http://127.0.0.1:{port}"
        job_id = _submit_form(browser, url, queryfile, name="from the browser")
        try:
            _wait_for_state(browser, "DONE", timeout=90)
        finally:
            _screenshot(browser, tmp_path / "served-job.png")
        progress = browser.find_element(By.ID, "job").text
        assert "retrieve" in progress
        assert "failed" not in progress
        browser.get(url + "/")
        assert "DONE" in browser.find_element(By.ID, f"job-{job_id}").text
        _screenshot(browser, tmp_path / "served-jobs.png")
    assert os.listdir(tmp_path / "data"), "nothing was retrieved"


def _http_port(config: Path) -> int:
    text = config.read_text(encoding="utf-8")
    return int(text.split("http:\n    port: ", 1)[1].split()[0])
