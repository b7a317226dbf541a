"""The web chat page in headless Chromium (Debian's chromium + chromedriver, selenium):
assertions on the page at 390 and 1280 px, light and dark, and screenshots of each saved
as artifacts (POPPINS_ARTIFACTS, else a temporary folder; never in git)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from _peers import missing, need_module
from poppins.server import serve
from test_server import ANSWERS, FIRST, SYSTEM, model, trained  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(os.environ.get("POPPINS_ARTIFACTS")
                 or Path(tempfile.gettempdir()) / "poppins-artifacts") / "web"
CODE_ANSWER = ("Here is the code:\n\n```python\ndef half(x):\n    return x / 2\n```\n\n"
               "Call `half(1)` for **one half**.")


class _Recorder:
    """The real model behind the server, recording each request's messages; ``delay``
    slows each token down (through the cancel hook) so an answer can be stopped."""

    def __init__(self, model):
        self.model, self.tokenizer, self.requests, self.delay = model, model.tokenizer, [], 0.0

    def _hook(self, cancel):
        def hook():
            if self.delay:
                time.sleep(self.delay)
            return cancel()
        return hook

    def chat(self, messages, cancel, **kw):
        self.requests.append(messages)
        return self.model.chat(messages, cancel=self._hook(cancel), **kw)

    def chat_stream(self, messages, cancel, **kw):
        self.requests.append(messages)
        return self.model.chat_stream(messages, cancel=self._hook(cancel), **kw)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        missing("browser", "no chromium/chromedriver installed (apt: chromium chromium-driver)")
    webdriver = need_module("browser", "selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _until(fn, timeout=60, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _viewport(driver, width, dark):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 844 if width < 600 else 900,
                            "deviceScaleFactor": 1, "mobile": width < 600})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})


def _ask(driver, text):
    from selenium.webdriver.common.by import By
    n = len(driver.find_elements(By.CSS_SELECTOR, ".assistant[data-done='1']"))
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    return n


def _answers(driver):
    from selenium.webdriver.common.by import By
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".assistant[data-done='1']")]


def _bg_luminance(driver) -> float:
    rgb = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    r, g, b = [int(x) for x in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_web_page(browser, model):
    from selenium.webdriver.common.by import By

    rec = _Recorder(model)
    srv = serve(rec, port=0)
    port = srv.server_address[1]
    d = browser
    try:
        d.get(srv.url + "/")
        # settings: a system prompt and temperature 0 go with every request
        d.find_element(By.ID, "gear").click()
        d.find_element(By.ID, "system").send_keys(SYSTEM)
        d.find_element(By.ID, "temperature").send_keys("0")
        d.find_element(By.ID, "gear").click()
        n = _ask(d, FIRST)
        _until(lambda: len(_answers(d)) > n, what="the first answer")
        assert _answers(d)[-1] == ANSWERS[FIRST]
        assert rec.requests[-1] == [{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": FIRST}]

        # a stopped answer is kept (and sent with the next request)
        rec.delay = 0.3
        n = _ask(d, "tell me everything")
        _until(lambda: d.find_elements(By.CSS_SELECTOR, ".assistant:not([data-done])")
               and d.find_elements(By.CSS_SELECTOR, ".assistant:not([data-done])")[0].text,
               what="the start of a slow answer")
        d.find_element(By.ID, "stop").click()
        _until(lambda: d.find_elements(By.CSS_SELECTOR, ".assistant[data-stopped='1']"),
               what="the stopped answer")
        stopped = d.find_element(By.CSS_SELECTOR, ".assistant[data-stopped='1']").text
        assert stopped and d.find_element(By.ID, "send").is_displayed()
        rec.delay = 0.0

        # the server goes away: a clear error, and the failed turn is not kept
        srv.shutdown()
        srv.server_close()
        _ask(d, "Why?")
        err = _until(lambda: d.find_elements(By.CSS_SELECTOR, ".error"), what="an error")
        assert "server" in err[0].text
        assert d.find_element(By.ID, "prompt").get_attribute("value") == "Why?"
        srv = serve(rec, port=port)                  # back on the same port
        before = len(rec.requests)
        n = _ask(d, "What is one half plus one quarter?")
        _until(lambda: len(rec.requests) > before and len(_answers(d)) > n, what="an answer")
        sent = rec.requests[-1]
        assert all(m["content"] != "Why?" for m in sent)
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user",
                                             "assistant", "user"]
        assert sent[4]["content"] == stopped        # the stopped answer was kept
        assert not d.find_elements(By.CSS_SELECTOR, ".error")

        # the conversation survives a reload; a code answer is a pre/code block
        d.refresh()
        _until(lambda: len(_answers(d)) == 3, what="the restored conversation")
        assert _answers(d)[0] == ANSWERS[FIRST]
        store = json.loads(d.execute_script("return localStorage.getItem('poppins-chats')"))
        chat = store["chats"][store["current"]]
        chat["messages"] += [{"role": "user", "content": "Show me code"},
                             {"role": "assistant", "content": CODE_ANSWER}]
        d.execute_script("localStorage.setItem('poppins-chats', arguments[0])", json.dumps(store))
        d.refresh()
        code = _until(lambda: d.find_elements(By.CSS_SELECTOR, ".assistant pre > code"),
                      what="a code block")
        assert code[0].text == "def half(x):\n    return x / 2"
        assert "language-python" in code[0].get_attribute("class")
        assert "```" not in _answers(d)[-1]
        assert d.find_element(By.CSS_SELECTOR, ".assistant p code").text == "half(1)"
        assert d.find_element(By.CSS_SELECTOR, ".assistant strong").text == "one half"

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for width in (1280, 390):
            for dark in (False, True):
                _viewport(d, width, dark)
                time.sleep(0.2)
                lum = _bg_luminance(d)
                assert (lum < 0.2) if dark else (lum > 0.8), (width, dark, lum)
                sw = d.execute_script("return document.documentElement.scrollWidth")
                assert sw <= width, f"horizontal overflow at {width} px: {sw}"
                right = d.execute_script(
                    "return document.getElementById('send').getBoundingClientRect().right")
                assert right <= width
                d.save_screenshot(str(ARTIFACTS / f"chat-{width}-{'dark' if dark else 'light'}.png"))
    finally:
        srv.shutdown()
        srv.server_close()
