"""The web page in a real headless browser (Chromium from the system, driven by Playwright) against
a scripted model: a turn streams, the run's output appears, undo and candidates work, the program
downloads, the playground streams with per-token probabilities on hover."""

from __future__ import annotations

import os
import shutil

import pytest

from scripted import coder_lm
from serving import Server

ANSWERS = {"Assign 3 to x.": "x = 3", "Add one to x.": "x = x + 1", "Print x.": "print(x)"}


def chromium() -> str | None:
    return os.environ.get("CODEGEN_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


pytestmark = pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync = pytest.importorskip("playwright.sync_api")
    with sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tok):
    with Server(coder_lm(tok, ANSWERS), tok, allow_run=True, run_timeout=5) as s:
        yield s


def test_a_conversation_in_the_page(browser, site, tmp_path):
    page = browser.new_page(accept_downloads=True)
    page.goto(site.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.inner_text("#model") == "codegen-test"
    say = page.locator("#say")
    say.fill("Assign 3 to x.")
    say.press("Enter")
    page.wait_for_function("document.querySelectorAll('.turn pre.code').length == 1 && "
                           "document.querySelector('.turn pre.code').innerText == 'x = 3'")
    page.wait_for_function("document.getElementById('output').innerText.includes('(ran in ')")
    say.fill("Print x.")
    page.click("#send")
    page.wait_for_function("document.getElementById('output').innerText.startsWith('3\\n')")
    assert page.locator(".turn").count() == 2
    assert page.locator(".turn >> nth=1 >> pre.code .fn, .turn >> nth=1 >> pre.code span").count() >= 0
    page.click("#undo")
    assert page.locator(".turn").count() == 1
    page.fill("#cands", "2")
    say.fill("Add one to x.")
    say.press("Enter")
    page.wait_for_selector("button.use")
    assert page.locator(".candidate").count() == 2
    page.locator("button.use").nth(1).click()
    page.wait_for_function("document.querySelectorAll('.turn pre.code').length == 2")
    assert page.locator(".turn pre.code").nth(1).inner_text() == "x = x + 1"
    page.fill("#cands", "1")
    say.fill("Print x.")
    say.press("Enter")
    page.wait_for_function("document.getElementById('output').innerText.startsWith('4\\n')")
    with page.expect_download() as info:
        page.click("#download")
    path = tmp_path / "program.py"
    info.value.save_as(path)
    assert path.read_text().endswith("# Assign 3 to x.\nx = 3\n\n# Add one to x.\nx = x + 1\n\n# Print x.\nprint(x)\n\n")
    page.close()


def test_the_playground_streams_with_probabilities(browser, site):
    page = browser.new_page()
    page.goto(site.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.click("#tab-play")
    page.fill("#prompt", "# Assign 3 to x.\n")
    page.fill("#p-temp", "0")
    page.click("#generate")
    page.wait_for_function("document.getElementById('completion-text').innerText.startsWith('x = 3')")
    token = page.locator("#completion-text span.tok").first
    token.hover()
    page.wait_for_selector("#tip:not([hidden])")
    tip = page.inner_text("#tip")
    # The scripted model puts logit 10 on its token and 0 on the 50294 others: p = e^10 / (e^10 + 50294) = 0.305.
    assert tip.startswith("p = 0.305\n\"x\"  0.305\n"), tip
    page.close()


def test_running_is_off_without_allow_run(browser, model, tok):
    with Server(model, tok) as s:
        page = browser.new_page()
        page.goto(s.url + "/")
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#run").is_disabled() and "--allow-run" in page.get_attribute("#run", "title")
        page.close()
