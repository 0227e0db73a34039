"""The web page in real headless Chromium (Debian's chromium + chromium-driver, installed by
scripts/setup.sh): upload a photo, see the box and the result thumbnails; page through the
duplicate groups and mark one "not duplicate". No skipping: a missing browser fails."""

from __future__ import annotations

import json
import shutil

import pytest

import imgfeat
from conftest import SAMPLES

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHOTOS = ["dog.jpg", "horses.jpg", "eagle.jpg", "coffee_cup.jpg", "kite_sky.jpg"]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    """Default-model features of a few photos plus a duplicate, served by uvicorn in a thread."""
    from imgfeat.retrieval.dedup import find_duplicates
    from imgfeat.retrieval.index import FeatureIndex
    from imgfeat.serve import create_app
    from imgfeat.serve.background import BackgroundServer

    root = tmp_path_factory.mktemp("serve-browser")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLES / name, photos / name)
    shutil.copy(SAMPLES / "horses.jpg", photos / "horses_again.jpg")
    imgfeat.extract(photos, root / "features", workers=0, progress=False)
    find_duplicates(root / "features", 0.9).to_parquet(root / "groups.parquet")
    app = create_app(FeatureIndex.build(root / "features"), groups_path=root / "groups.parquet",
                     reviews_path=root / "reviews.jsonl")
    with BackgroundServer(app) as server:
        yield {"url": server.url, "root": root}


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert shutil.which(path), f"{path} is missing: run scripts/setup.sh as root (apt-get install {package})"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _thumbnails_loaded(driver, selector: str) -> int:
    """How many images under `selector` have finished loading real pixels."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".filter(img => img.complete && img.naturalWidth > 0).length;", selector)


def test_upload_shows_box_and_similar_images(page_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_server["url"] + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "images indexed" in d.find_element(By.ID, "health").text)
    browser.find_element(By.ID, "file").send_keys(str(SAMPLES / "horses.jpg"))
    wait.until(lambda d: _thumbnails_loaded(d, "#results img.thumb") == len(PHOTOS) + 1)

    status = browser.find_element(By.ID, "search-status").text
    assert "most similar images" in status, status
    captions = [float(e.text) for e in browser.find_elements(By.CSS_SELECTOR, "#results .score")]
    assert captions == sorted(captions, reverse=True) and captions[0] > 0.99
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .path")]
    assert set(names[:2]) == {"horses.jpg", "horses_again.jpg"}
    assert "horse" in browser.find_element(By.ID, "detection").text
    # the canvas holds the photo with the detected box drawn on it (the box colour is there)
    red_pixels = browser.execute_script(
        "const c = document.getElementById('preview');"
        "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < px.length; i += 4) { if (px[i] > 240 && px[i+1] < 80 && px[i+2] < 70) n++; }"
        "return [c.width, n];")
    assert red_pixels[0] > 100 and red_pixels[1] > 200, red_pixels
    _assert_no_csp_violation(browser)


def _assert_no_csp_violation(browser):
    """The page works under its Content-Security-Policy: Chromium logged no violation."""
    violations = [entry["message"] for entry in browser.get_log("browser")
                  if "Content Security Policy" in entry["message"] or "Content-Security-Policy" in entry["message"]]
    assert not violations, violations


TOKEN = "browser-token-0123456789"


@pytest.fixture(scope="module")
def token_server(page_server):
    """The same index served with a token."""
    from imgfeat.retrieval.index import FeatureIndex
    from imgfeat.serve import ServeConfig, create_app
    from imgfeat.serve.background import BackgroundServer

    app = create_app(FeatureIndex.build(page_server["root"] / "features"), config=ServeConfig(token=TOKEN))
    with BackgroundServer(app) as server:
        yield {"url": server.url}


def test_the_page_takes_the_token_from_its_address(token_server, browser):
    """http://host/#token=... : searches and thumbnails carry it (a cookie); the address drops it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.delete_all_cookies()
    browser.get(token_server["url"] + "/#token=" + TOKEN)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "images indexed" in d.find_element(By.ID, "health").text)
    assert "token" not in browser.current_url
    browser.find_element(By.ID, "file").send_keys(str(SAMPLES / "horses.jpg"))
    wait.until(lambda d: _thumbnails_loaded(d, "#results img.thumb") == len(PHOTOS) + 1)
    _assert_no_csp_violation(browser)
    browser.delete_all_cookies()
    browser.get(token_server["url"] + "/")  # no token: the search is refused, and says why
    browser.find_element(By.ID, "file").send_keys(str(SAMPLES / "horses.jpg"))
    status = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "search-status").text.startswith("Could not") and
        d.find_element(By.ID, "search-status"))
    assert "unauthorised" in status.text


def test_upload_of_a_non_image_shows_the_error(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "not_really.jpg"
    fake.write_text("this is text")
    browser.get(page_server["url"] + "/")
    browser.find_element(By.ID, "file").send_keys(str(fake))
    status = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "search-status").text.startswith("Could not") and
        d.find_element(By.ID, "search-status"))
    assert "not-an-image" in status.text and "error" in status.get_attribute("class")


def test_duplicates_view_marks_a_group_not_duplicate(page_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_server["url"] + "/")
    browser.find_element(By.ID, "tab-duplicates").click()
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: _thumbnails_loaded(d, "#groups img.thumb") >= 2)
    assert "of 1" in browser.find_element(By.ID, "page-info").text
    button = browser.find_element(By.CSS_SELECTOR, "#groups .group button.not-duplicate")
    button.click()
    wait.until(lambda d: "reviewed" in d.find_element(By.CSS_SELECTOR, "#groups .group").get_attribute("class"))
    record = json.loads((page_server["root"] / "reviews.jsonl").read_text().splitlines()[-1])
    assert record["verdict"] == "not-duplicate" and len(record["ids"]) == 2
    browser.refresh()  # the verdict is stored: the reloaded page shows it
    browser.find_element(By.ID, "tab-duplicates").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#groups .group.reviewed"))
