"""The Space in a real browser: headless Debian Chromium driven by Playwright, on 127.0.0.1.

Loads the page, opens samples from the gallery, paints strokes with the brush, sets context / paste /
copy, runs a rewrite and checks that the before / after images appear and differ; saves a screenshot
under the test's temp dir (``OLAM_EDIT_SCREENSHOT=path`` copies it there too).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from test_space import Space, space  # noqa: F401 - the shared server fixture

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000


@contextlib.contextmanager
def space_page(space: Space, ready: str = "#gallery .thumbnail-item img") -> Iterator:  # noqa: F811
    """A headless Chromium page on the Space, once ``ready`` (default: the gallery) is shown; the browser
    is closed on exit."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (apt-get install -y chromium chromium-driver)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(space.url, wait_until="domcontentloaded")
            page.wait_for_selector(ready, timeout=TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def open_sample(page, index: int) -> None:
    page.locator("#gallery .thumbnail-item").nth(index).click()
    page.wait_for_function(f"document.querySelector('#status').innerText.includes('Sample #{index} is open')",
                           timeout=TIMEOUT_MS)
    page.locator("#painter canvas").first.wait_for(timeout=TIMEOUT_MS)


def stroke(page, dx: float, dy: float) -> None:
    """Drag the brush across the painter, from left of centre to right, at ``dy`` below the centre."""
    box = page.locator("#painter canvas").last.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 + dy
    page.mouse.move(cx - dx, cy)
    page.mouse.down()
    for x, y in ((cx, cy + 4), (cx + dx, cy)):  # few events: each one redraws the canvas (slow, no GPU)
        page.mouse.move(x, y)
    page.mouse.up()


def press(page, button_id: str, expect: str) -> None:
    page.locator(f"#{button_id}").click()
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({expect!r})", timeout=TIMEOUT_MS)


def image_sources(page, gallery_id: str) -> list[str]:
    return page.locator(f"#{gallery_id} .thumbnail-item img").evaluate_all("els => els.map(e => e.src)")


def test_paint_rewrite_and_see_before_after_in_chromium(space: Space, tmp_path: Path) -> None:  # noqa: F811
    shot = tmp_path / "space.png"
    with space_page(space) as page:
        before_rewrite = image_sources(page, "after")

        open_sample(page, 3)
        stroke(page, 30, -5)
        press(page, "add-context", "1 context region")
        press(page, "set-paste", "paste region is set")
        open_sample(page, 7)
        stroke(page, 30, -5)
        press(page, "set-copy", "copy region is set")
        press(page, "rewrite", "Rewritten")

        before, after = image_sources(page, "before"), image_sources(page, "after")
        status = page.locator("#status").inner_text()
        page.screenshot(path=str(shot), full_page=True)
    assert status.startswith("✓") and "‖ΔW‖/‖W‖" in status, status
    assert len(before) == len(after) == space.studio.settings.compare_count
    assert after != before_rewrite and after != before
    assert shot.stat().st_size > 10_000
    if os.environ.get("OLAM_EDIT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["OLAM_EDIT_SCREENSHOT"])
