"""A real headless Chromium for the tests of the product's pages (Debian's `chromium` and
`chromium-driver`, driven by Selenium; nothing is downloaded at test time).

Use the `browser` fixture: it yields a Selenium WebDriver with the browser console and the
network log enabled. Outside CI a test that needs it skips when Chromium is missing; under CI
(`CI` set) it fails instead, since `.ci/run` installs Chromium.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _first_on_path(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: .ci/run must install it (apt-get install chromium chromium-driver)")
    pytest.skip(f"{reason} (apt-get install chromium chromium-driver)")


def make_driver(width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver that keeps console and network logs."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    binary, driver = _first_on_path(CHROMIUM_NAMES), _first_on_path(DRIVER_NAMES)
    if binary is None or driver is None:
        _missing("no system chromium/chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.fixture
def browser():
    driver = make_driver()
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """Messages the page logged at SEVERE level (errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    """Every URL the page asked the network for since the last call (data: URLs excluded)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith("data:"):
                urls.append(url)
    return urls
