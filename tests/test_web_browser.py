"""End to end in a real browser: ``perso serve`` (uvicorn, a subprocess on a free loopback port)
over an embedded site with stocked cards; headless Debian Chromium driven by Selenium
(/usr/bin/chromedriver) logs in as a counter officer with the keyboard, "scans" a receipt,
checks the portrait, retrieves the card and waits for "card taken"; then the cabinet store must
say ISSUED with the slot empty.  The operator dashboard is driven too (the line started from the
page, the live chart drawn).  Screenshots of both pages go to tests/artifacts/ (not committed).

Needs the Debian packages chromium and chromium-driver (Makefile TEST_PACKAGES); fails, never
skips, without them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from ecabinet.officers import Role
from ecabinet.slots import SlotState
from ecabinet.store import CabinetStore, CardState
from personaliser.synth import synth_applications
from tests.web.helpers import (
    PASSWORD,
    TODAY,
    Prepared,
    add_officers,
    copy_home,
    free_port,
    offices_of,
    receipts,
)

pytest_plugins = ("tests.web.fixtures",)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WAIT = 20.0


def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# screenshots and logs written by the tests\n*\n", encoding="utf-8")
    return ARTIFACTS


@pytest.fixture(scope="module")
def server(
    web_line_home: Prepared, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Prepared]]:
    prepared = copy_home(web_line_home, tmp_path_factory.mktemp("browser") / "copy")
    offices = offices_of(prepared.applications)
    office = max(sorted(set(offices.values())), key=list(offices.values()).count)
    add_officers(
        prepared.home, {"co1": (office, Role.COUNTER_OFFICER), "op1": (office, Role.OPERATOR)}
    )
    port = free_port()
    log = (artifacts() / "serve.log").open("w", encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "personaliser.cli", "serve", "--home", str(prepared.home.path),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (artifacts() / "serve.log").read_text()
            try:
                if httpx2.get(f"{base}/login", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, "perso serve did not come up"
            time.sleep(0.2)
        yield base, prepared
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def operator_api(base: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=base, timeout=60) as client:
        r = client.post("/api/session", json={"officer_id": "op1", "password": PASSWORD})
        assert r.status_code == 200, r.text
        client.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            pytest.fail(
                f"{binary} is missing: apt-get install chromium chromium-driver", pytrace=False
            )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1400",
        "--lang=en-GB",
    ):
        options.add_argument(arg)  # fmt: skip
    driver = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def focused(driver: WebDriver, element_id: str) -> WebElement:
    """The element with the keyboard focus, once it is ``element_id`` (5 s at most): Chromium
    applies ``autofocus`` at a rendering step after the load (HTML "flush autofocus candidates"),
    and a page's script moves the focus after its own fetches, so reading it at once races."""
    WebDriverWait(driver, 5).until(
        lambda d: d.switch_to.active_element.get_attribute("id") == element_id,
        f"the focus never reached #{element_id}",
    )
    element: WebElement = driver.switch_to.active_element
    return element


def log_in(driver: WebDriver, base: str, officer_id: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/login")
    focused(driver, "officer_id").send_keys(officer_id, Keys.TAB)  # the keyboard starts here
    driver.switch_to.active_element.send_keys(PASSWORD, Keys.ENTER)


def test_counter_officer_retrieves_a_card_in_the_browser(
    server: tuple[str, Prepared], browser: WebDriver
) -> None:
    base, prepared = server
    with operator_api(base) as api:
        assert api.post("/api/cabinet/dispatch").json()["dispatched"] == 12
        assert api.post("/api/cabinet/deposit", json={}).json()["counts"] == {"stocked": 12}
    offices = offices_of(prepared.applications)
    office = max(sorted(set(offices.values())), key=list(offices.values()).count)
    app_id = sorted(a for a, o in offices.items() if o == office)[0]
    receipt = receipts(prepared.applications)[app_id]

    log_in(browser, base, "co1")
    wait = WebDriverWait(browser, WAIT)
    wait.until(ec.url_to_be(f"{base}/counter"))
    focused(browser, "receipt").send_keys(receipt, Keys.ENTER)  # a scanner types into the focus
    card = wait.until(ec.visibility_of_element_located((By.ID, "card")))
    portrait = browser.find_element(By.ID, "portrait")
    wait.until(
        lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", portrait
        )
    )
    assert browser.find_element(By.ID, "application").text == app_id
    assert browser.find_element(By.ID, "name").text
    slot = browser.find_element(By.ID, "place").text.rsplit(" ", 1)[-1]
    retrieve = focused(browser, "retrieve")
    browser.save_screenshot(str(artifacts() / "counter-handover.png"))

    retrieve.send_keys(Keys.ENTER)  # keyboard only
    status = browser.find_element(By.ID, "status")
    wait.until(lambda d: "taken" in status.text)
    assert status.text.startswith(f"Slot {slot} opened") and "card taken" in status.text
    assert not card.is_displayed()  # the applicant's data left the page with the card
    assert browser.find_element(By.ID, "portrait").get_attribute("src") in (None, "")
    assert browser.find_element(By.ID, "error").text == ""
    assert browser.find_element(By.ID, "receipt").get_attribute("value") == ""
    browser.save_screenshot(str(artifacts() / "counter-taken.png"))

    with CabinetStore(prepared.home.path / "cabinet.db") as cabinets:
        record = cabinets.card(app_id)
        assert record is not None and record.state is CardState.ISSUED
        assert record.officer == "co1"
        stored = [s for s in cabinets.slot_map(f"{office}-C1") if s.code == slot]
        assert len(stored) == 1 and stored[0].state is SlotState.EMPTY
        assert stored[0].card_serial is None

    # The same receipt again: nothing at this office any more, said in words, nothing opens.
    browser.find_element(By.ID, "next").send_keys(Keys.ENTER)
    focused(browser, "receipt").send_keys(receipt, Keys.ENTER)
    error = browser.find_element(By.ID, "error")
    wait.until(lambda d: error.text)
    assert "No card for this receipt" in error.text


def test_operator_dashboard_runs_the_line_with_a_live_chart(
    server: tuple[str, Prepared], browser: WebDriver
) -> None:
    base, _ = server
    with operator_api(base) as api:
        apps = [a.model_dump(mode="json") for a in synth_applications(30, seed=31)]
        assert api.post("/api/applications", json={"applications": apps}).json()["new"] == 30
        started = api.post("/api/batches/start", json={"today": TODAY, "all": True}).json()
        assert sum(started["queued"].values()) == 30
    log_in(browser, base, "op1")
    wait = WebDriverWait(browser, WAIT)
    wait.until(ec.url_to_be(f"{base}/operator"))
    start = browser.find_element(By.CSS_SELECTOR, 'button[data-action="start"]')
    start.send_keys(Keys.ENTER)
    notice = browser.find_element(By.ID, "notice")
    wait.until(lambda d: notice.text.startswith("Line "))
    state = browser.find_element(By.ID, "t-state")
    deadline = time.monotonic() + 90
    while browser.find_element(By.ID, "t-passed").text != "30 / 30":
        assert time.monotonic() < deadline, browser.find_element(By.ID, "t-passed").text
        time.sleep(0.3)
    # The chart has been drawn from the samples: a filled rate area and the passed line.
    WebDriverWait(browser, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#chart polyline.passed")
    )
    desc = browser.find_element(By.CSS_SELECTOR, "#chart desc").get_attribute("textContent") or ""
    assert "cards passed" in desc
    rows = browser.find_elements(By.CSS_SELECTOR, "#stations tr")
    assert len(rows) >= 3
    assert browser.find_elements(By.CSS_SELECTOR, "#batches tr")
    browser.save_screenshot(str(artifacts() / "operator-dashboard.png"))
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="drain"]').send_keys(Keys.ENTER)
    wait.until(lambda d: state.text in ("done", "idle"))
    assert browser.find_element(By.ID, "error").text == ""
