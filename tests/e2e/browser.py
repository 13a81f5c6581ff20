"""A headless Chromium driven by Selenium, for the console's end-to-end tests.

Debian's `chromium` and `chromium-driver` (scripts/install.sh --test installs both): the paths are
given to Selenium, so it never tries to download a browser or a driver.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


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
