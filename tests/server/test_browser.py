"""The browser editor in a real headless Chromium (Debian's `chromium` and `chromium-driver`), driven by
Selenium against a real server on loopback with the tiny model."""

import os
import shutil
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from corll.feedback import edit_tokens, word_edit_distance
from corll.server.engine import PolicyEngine
from corll.store import Principal, Store
from tests.server.test_app import LiveServer


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PWNED = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver packages (scripts/test.sh "
                    "installs them when run as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def site(tmp_path, browser):
    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    server = LiveServer(store, PolicyEngine("tiny", default_max_tokens=24))
    keys = {"alice": store.create_api_key("acme", "alice"), "admin": store.create_api_key("acme", "root", admin=True)}
    browser.set_window_size(1100, 900)
    yield server, store, keys, browser
    browser.execute_script("sessionStorage.clear()")
    server.stop()


def wait(driver, condition, timeout: float = 60):
    """Poll `condition` until it holds. A view that re-renders replaces the elements a poll has just found,
    so a stale element means "look again", as a missing one does (the page is still changing)."""
    return WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(condition)


def sign_in(driver, url: str, key: str) -> None:
    driver.get(url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(url + "/")
    driver.find_element(By.ID, "key").send_keys(key, Keys.ENTER)


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    """Into $CORLL_SCREENSHOTS (the docs' pictures are made this way), else the test's folder."""
    folder = Path(os.environ.get("CORLL_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    return path


def test_draft_edit_keep_and_react_are_stored_with_the_cost_the_page_showed(site, tmp_path):
    server, store, keys, driver = site
    sign_in(driver, server.url, keys["alice"])
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
    assert "alice · acme" in text(driver, "who")
    driver.find_element(By.ID, "prompt").send_keys("Write a short thank-you note to a neighbour.")
    driver.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard shortcut drafts
    wait(driver, lambda d: "Edit the draft" in d.find_element(By.ID, "pad-status").text)
    box = driver.find_element(By.ID, "draft")
    draft = box.get_attribute("value")
    (logged,) = store.list_interactions("acme", user="alice")
    assert logged.response == draft  # what streamed in is what was logged
    assert text(driver, "draft-version") == "the base model"

    box.send_keys(Keys.CONTROL, Keys.END)
    box.send_keys(" Thank you so much, truly!")
    kept = box.get_attribute("value")
    cost = word_edit_distance(draft, kept)
    assert text(driver, "cost") == str(cost) and cost >= 5
    inserted = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#diff ins")]
    assert inserted[-3:] == ["so", "much,", "truly!"]
    box.send_keys(Keys.CONTROL, "s")  # keep
    wait(driver, lambda d: d.find_element(By.ID, "pad-status").text.startswith("Kept:"))
    assert f"{cost} tokens edited" in text(driver, "pad-status")
    driver.find_element(By.CSS_SELECTOR, "[data-reaction=love]").click()
    wait(driver, lambda d: "love" in d.find_element(By.ID, "pad-status").text)

    events = store.feedback(tenant="acme")
    assert [(e.kind, e.author, e.edit, e.reaction) for e in events] == [
        ("edit", "alice", kept, None), ("reaction", "alice", None, "love")]
    assert keys["alice"] not in driver.current_url

    driver.find_element(By.CSS_SELECTOR, "[data-view=history]").click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#history-list li"))
    item = driver.find_element(By.CSS_SELECTOR, "#history-list li").text
    assert f"{cost} tokens edited" in item and "love" in item and "truly!" in item


@pytest.mark.slow
def test_with_smollm2_the_pad_drafts_readable_text_that_a_person_edits(tmp_path, browser, monkeypatch):
    """The pad as a newcomer sees it, on the real model (its screenshot is the README's picture).

    The pad asks without a seed, so the server draws one; the test fixes that draw, because the 135M model
    sampled at temperature 1 writes prose almost always (24 of 24 seeds here) but not always, and a
    flake is not a finding."""
    monkeypatch.setattr("corll.server.protocol.secrets.randbits", lambda bits: 5)
    store = Store(f"sqlite:///{tmp_path / 'corll.db'}")
    server = LiveServer(store, PolicyEngine("smollm2-135m-instruct", precision="fp32", default_max_tokens=64))
    try:
        driver = browser
        driver.set_window_size(1100, 900)
        sign_in(driver, server.url, store.create_api_key("acme", "alice"))
        wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
        driver.find_element(By.ID, "prompt").send_keys("Write a short thank-you note to a neighbour who watered "
                                                       "my plants.")
        driver.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.ENTER)
        wait(driver, lambda d: "Edit the draft" in d.find_element(By.ID, "pad-status").text, timeout=120)
        box = driver.find_element(By.ID, "draft")
        draft = box.get_attribute("value")
        words = draft.split()
        # prose, not the tiny test model's random characters: most "words" are words of letters
        assert len(words) >= 8 and sum(w.strip(".,!?;:'\"").isalpha() for w in words) >= 0.5 * len(words), draft
        box.send_keys(Keys.CONTROL, Keys.END)
        box.send_keys(" See you at the garden party on Sunday!")
        assert text(driver, "cost") == str(word_edit_distance(draft, box.get_attribute("value")))
        driver.set_window_size(1100, 1400)
        screenshot(driver, "browser-pad.png", tmp_path)
    finally:
        driver.execute_script("sessionStorage.clear()")
        server.stop()


PARITY_TEXTS = ["Hello, world!", "It's a well-known fact -- isn't it?", "Café déjà vu… naïve “quotes” (yes).",
                "tabs\tand\u3000wide\u2028lines\x1c", "emoji 🙂✨ and 東京 タワー 2024年", "e\u0301 combining ´ mark",
                "snake_case x=1+2; a/b 50% $5.00", "", "  "]


def test_the_page_counts_the_same_tokens_as_corll(site):
    """The cost the page shows is the cost corll learns from: same tokens on hard text, same distance."""
    server, _, keys, driver = site
    sign_in(driver, server.url, keys["alice"])
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
    for text_ in PARITY_TEXTS:
        assert driver.execute_script("return tokens(arguments[0]);", text_) == edit_tokens(text_), text_
    a, b = PARITY_TEXTS[1], "It is a well known fact, isn't it!"
    assert driver.execute_script("return editDistance(tokens(arguments[0]), tokens(arguments[1]));", a, b) \
        == word_edit_distance(a, b) == 7  # It is, well known, "--" → ",", "?" → "!"


def test_markup_in_drafts_and_edits_shows_as_text_and_never_runs(site, tmp_path):
    server, store, keys, driver = site
    alice = Principal("acme", "alice")
    completion = store.record_interaction(alice, [{"role": "user", "content": PWNED}], PWNED,
                                          policy_version_id=None, sampling={}, response_logprob=None)
    store.add_feedback(alice, completion, edit=PWNED + " <b>bold</b>")
    sign_in(driver, server.url, keys["alice"])
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
    driver.find_element(By.CSS_SELECTOR, "[data-view=history]").click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#history-list li"))
    shown = driver.find_element(By.CSS_SELECTOR, "#history-list li").text
    assert "<script>window.pwned = 1</script>" in shown and "<b>bold</b>" in shown
    assert driver.find_elements(By.CSS_SELECTOR, "#history-list img, #history-list script, #history-list b") == []
    # and typed into the pad's diff
    driver.find_element(By.CSS_SELECTOR, "[data-view=pad]").click()
    driver.find_element(By.ID, "prompt").send_keys("Say hi.")
    driver.find_element(By.ID, "draft-button").click()
    wait(driver, lambda d: "Edit the draft" in d.find_element(By.ID, "pad-status").text)
    driver.find_element(By.ID, "draft").send_keys(" " + PWNED)
    assert "onerror" in text(driver, "diff")
    time.sleep(0.3)
    assert driver.execute_script("return window.pwned === undefined")


def test_a_wrong_key_shows_an_error_and_nothing_else(site):
    server, _, _, driver = site
    sign_in(driver, server.url, "sk-not-a-key")
    wait(driver, lambda d: d.find_element(By.ID, "sign-in-error").text)
    assert "invalid API key" in text(driver, "sign-in-error")
    assert not driver.find_element(By.ID, "app").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('corll-key')") is None


def test_the_learning_view_charts_edits_and_an_admin_rolls_back(site, tmp_path):
    server, store, keys, driver = site
    alice = Principal("acme", "alice")
    for i, cost in enumerate((6, 5, 5, 2, 1)):
        completion = store.record_interaction(alice, [{"role": "user", "content": f"note {i}"}], "a b c d e f g",
                                              policy_version_id=None, sampling={}, response_logprob=None)
        store.add_feedback(alice, completion, edit=" ".join(["x"] * cost + list("abcdefg"[cost:])))
    promoted = store.decide("acme", "alice", decision="promoted", reason="held-out edit margin +1.2 nats",
                            seen_through=3, adapter_path=str(tmp_path / "a1"), parent_id=None, details={"pairs": 4},
                            metrics={"margin_gain": 1.2})
    store.decide("acme", "alice", decision="rejected", reason="monitor: KL to π_0 is 41.7 nats (> 20.0)",
                 seen_through=5, adapter_path=str(tmp_path / "a2"), parent_id=promoted.version_id,
                 details={"pairs": 4}, metrics={"margin_gain": 0.3})
    sign_in(driver, server.url, keys["admin"])
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
    driver.find_element(By.CSS_SELECTOR, "[data-view=learned]").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 2)
    rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#versions tbody tr")]
    assert "rejected" in rows[0] and "KL to π_0 is 41.7" in rows[0] and "active" in rows[1]
    points = driver.find_element(By.CSS_SELECTOR, "#chart polyline").get_attribute("points").split()
    assert len(points) == 5
    driver.set_window_size(1100, 1200)
    screenshot(driver, "browser-learned.png", tmp_path)
    driver.find_element(By.ID, "base-user").send_keys("alice")
    driver.find_element(By.CSS_SELECTOR, "#base-form button").click()
    wait(driver, lambda d: "base model" in d.find_element(By.CSS_SELECTOR, "#versions tbody tr").text)
    assert store.active_version("acme", "alice").adapter_path is None
    assert [d.decision for d in store.decisions("acme")][-1] == "rollback"


def test_the_page_fits_a_phone_and_every_control_has_a_label(site):
    server, _, keys, driver = site
    driver.set_window_size(360, 800)
    sign_in(driver, server.url, keys["alice"])
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
    for view in ("pad", "history", "learned"):
        driver.find_element(By.CSS_SELECTOR, f"[data-view={view}]").click()
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 360 + 1, view
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, textarea, select')].filter(e => e.labels.length === 0).map(e => e.id)")
    assert unlabelled == []
    # keyboard alone: the tabs, the prompt and the draft button are reachable with Tab
    driver.find_element(By.CSS_SELECTOR, "[data-view=pad]").click()
    reached = set()
    for _ in range(12):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        reached.add(driver.switch_to.active_element.get_attribute("id") or driver.switch_to.active_element.text)
    assert {"prompt", "instructions", "draft-button"} <= reached
