"""A headless Chromium driven by Selenium, for the console's end-to-end tests.

Debian's `chromium` and `chromium-driver` (scripts/install.sh --test installs both): the paths are
given to Selenium, so it never tries to download a browser or a driver.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    """find_chromium()'s paths, for a test module; the module is skipped, saying what installs
    them, when Chromium, its driver or selenium is missing."""
    import pytest

    found = find_chromium()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (scripts/install.sh --test installs Debian's "
                    "chromium and chromium-driver)", allow_module_level=True)
    pytest.importorskip("selenium", reason="selenium is not installed (the test extra: pip install -e '.[test]')")
    return found


@contextmanager
def chromium(width: int = 1100, height: int = 860):
    """A headless Chromium for a test module's fixture, quit at the end."""
    driver = start(*require_chromium(), width=width, height=height)
    try:
        yield driver
    finally:
        driver.quit()


def start(browser: str, driver: str, width: int = 1100, height: int = 860):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", f"--window-size={width},{height}", "--disable-gpu", "--disable-extensions",
                "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")          # Chromium's sandbox refuses to run as root (CI containers)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def screenshot(driver, path: Path, width: int = 1100) -> None:
    """The whole page (its scroll height), saved as a PNG (of 128 colors, a third of the bytes, when
    Pillow is there: these pictures are committed)."""
    driver.set_window_size(width, 400)             # else the page is at least as tall as the last window
    height, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    driver.set_window_size(width, min(max(height, 400), 1600) + chrome)
    driver.save_screenshot(str(path))
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE)
    small.save(path, optimize=True)


# ---- the console tests' steps (selenium imported when they run: the tests skip without it) -----
def wait(driver, condition, timeout=20, what="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=f"waited for {what}")


def by_id(driver, id_):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def open_view(driver, view):
    by_id(driver, f"tab-{view}").click()
    wait(driver, lambda d: by_id(d, f"view-{view}").is_displayed(), what=f"the {view} view")


def answer_keys_dialog(driver, admin_key):
    from selenium.webdriver.common.by import By

    dialog = wait(driver, lambda d: d.find_element(By.ID, "key-dialog").is_displayed() and
                  d.find_element(By.ID, "key-dialog"), what="the key dialog")
    message = by_id(driver, "key-message").text
    by_id(driver, "key-admin").send_keys(admin_key)
    by_id(driver, "key-save").click()
    wait(driver, lambda d: not dialog.is_displayed(), what="the key dialog to close")
    return message


def upload(driver, path: Path, name: str):
    by_id(driver, "upload-file").send_keys(str(path))
    field = by_id(driver, "upload-name")
    field.clear()
    field.send_keys(name)
    by_id(driver, "upload-submit").click()
