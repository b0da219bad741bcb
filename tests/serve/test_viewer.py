"""The viewer in a real headless Chromium: tiles load, the map is not blank, a click shows a triplet."""

from __future__ import annotations

import io
import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

from scale_alibi.contract.tiles import tile_bounds
from tests.release_factory import X0, Y0, Z
from tests.serve_fixtures import shared_data_dir, shared_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
# A developer's machine without a browser skips this module; CI installs one, so there a missing
# browser is a failure, never a silent skip.
if not (CHROMIUM and DRIVER) and os.environ.get("CI"):
    raise RuntimeError("CI needs Debian's chromium and chromium-driver for the viewer test (.ci/run installs them)")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium + chromium-driver")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="viewer-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def test_viewer_shows_tiles_and_a_clicked_triplet(browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    server = shared_server()
    data = shared_data_dir()
    browser.get(f"{server.url}/?release=small")
    wait_for(browser, "return document.body.dataset.ready === '1'")

    # At least four tiles requested from this server, answered 200, decoded by the page.
    wait_for(browser, "return document.querySelectorAll('img.leaflet-tile-loaded').length >= 4")
    statuses = browser.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/tiles/small/') && e.name.endsWith('.png'))"
        ".map(e => e.responseStatus)")
    assert sum(s == 200 for s in statuses) >= 4, statuses
    entries = browser.execute_script("return performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus])")
    assert all(s == 200 for s in statuses), [e for e in entries if e[1] != 200]

    # The map pane shows imagery, not a blank or flat background.
    pane = browser.find_element(By.ID, "map")
    shot = np.asarray(Image.open(io.BytesIO(pane.screenshot_as_png)).convert("RGB")).astype(np.int32)
    assert shot.std() > 20
    assert len(np.unique(shot.reshape(-1, 3) // 8, axis=0)) > 200

    # Click the centre of triplet (Z, X0+1, Y0+1): the panel shows its four images at full size.
    x, y = X0 + 1, Y0 + 1
    w, s, e, n = tile_bounds(np.array([Z]), np.array([x]), np.array([y]))[0]
    px, py = browser.execute_script(
        "const p = viewer.map.latLngToContainerPoint(L.latLng(arguments[0], arguments[1])); return [p.x, p.y];",
        (s + n) / 2, (w + e) / 2)
    size = pane.size
    ActionChains(browser).move_to_element_with_offset(pane, px - size["width"] / 2, py - size["height"] / 2).click().perform()
    wait_for(browser, "return document.getElementById('triplet').dataset.ready === '1'")
    assert browser.execute_script("return document.getElementById('triplet').dataset.tile") == f"{Z}/{x}/{y}"
    for layer in ("s1", "s2", "naip"):
        img = browser.find_element(By.ID, f"triplet-{layer}")
        assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [256, 256]
        assert img.is_displayed() and img.size["width"] >= 256 and img.size["height"] >= 256
    canvas = browser.find_element(By.ID, "triplet-hires")
    assert canvas.is_displayed() and canvas.size["width"] >= 512
    assert browser.execute_script("return [arguments[0].width, arguments[0].height]", canvas) == [512, 512]
    # The 512 px image is the four z+1 NAIP tiles pasted row-major: check one pixel of each quadrant.
    for i, (dx, dy) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        tile = np.asarray(Image.open(data.small.tile_path("naip", Z + 1, 2 * x + dx, 2 * y + dy)).convert("RGBA"))
        got = browser.execute_script(
            "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data)",
            canvas, dx * 256 + 37, dy * 256 + 91)
        assert got == tile[91, 37].tolist(), i
    meta = browser.find_element(By.ID, "triplet-meta").text
    assert f'"x": {x}' in meta and '"hash_naip_hires"' in meta
