"""The SC's web console in a real browser: Debian's headless Chromium through chromedriver
(selenium, never downloading a driver), against a live plaintext cluster (one SC, two SPUs).

Each page is loaded and its DOM checked against the client's own answers (the partition table's
rows and leaders, the group's lag, …) and saved as a screenshot under
``test-artifacts/console/``; a page loaded with JavaScript disabled still has its tables; and
with JavaScript on, a page refreshes its numbers in place when the cluster changes."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from console_cluster import A1_RECORDS, B1_RECORDS, WAIT_S, console_cluster, fill
from dataplane_cluster import DataPlaneCluster, run_async, wait_committed

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts", "console")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_LOAD_S = 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Iterator[tuple[DataPlaneCluster, str]]:
    c, address = console_cluster(str(tmp_path_factory.mktemp("console-browser")))
    try:
        async def setup() -> None:
            async with c.client() as client:
                await fill(client)
        run_async(setup)
        yield c, f"http://{address}"
    finally:
        c.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(PAGE_LOAD_S)
        os.makedirs(ARTIFACTS, exist_ok=True)
        yield driver
    finally:
        driver.quit()


def load(driver: webdriver.Chrome, url: str, shot: str) -> None:
    driver.get(url)
    WebDriverWait(driver, PAGE_LOAD_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "main h1"))
    driver.save_screenshot(os.path.join(ARTIFACTS, f"{shot}.png"))


def _fresh(read: Any) -> Any:
    """``read()``, again if the page's refresh swapped its <main> in between (at most 3 times)."""
    for attempt in range(3):
        try:
            return read()
        except StaleElementReferenceException:
            if attempt == 2:
                raise
    return None  # not reached


def cell(driver: webdriver.Chrome, table: str, row: str, col: str) -> str:
    return _fresh(lambda: driver.find_element(By.CSS_SELECTOR,
                                              f'#{table} tr[data-key="{row}"] td[data-col="{col}"]').text)


def rows(driver: webdriver.Chrome, table: str) -> list[str]:
    return _fresh(lambda: [r.get_attribute("data-key")
                           for r in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")])


def rate(text: str) -> float:
    """The number of an "In (records/s)" cell ("12.5/s"); 0 when not known yet ("\u2014")."""
    return float(text.removesuffix("/s").replace(",", "")) if text.endswith("/s") else 0.0


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return _fresh(lambda: driver.find_element(By.CSS_SELECTOR, css).text)


def test_each_page_shows_the_clusters_values(cluster: tuple[DataPlaneCluster, str],
                                             browser: webdriver.Chrome) -> None:
    c, url = cluster

    async def truth() -> tuple[list[dict[str, Any]], Any]:
        async with c.client() as client:
            return await client.partition_list("a1"), await client.group_describe("ga")
    parts, group = run_async(truth)

    load(browser, url + "/", "overview")
    assert text_of(browser, "#viewer") == "anonymous"
    assert text_of(browser, "#card-spus .v") == "2 of 2"
    assert cell(browser, "scs", "1", "role") == "leader"
    assert rows(browser, "spus") == ["1", "2"]
    assert text_of(browser, "#card-offline .v") == "0"

    load(browser, url + "/topics", "topics")
    assert {"a1", "b1"} <= set(rows(browser, "topics"))
    assert cell(browser, "topics", "a1", "records") == str(A1_RECORDS)
    assert cell(browser, "topics", "b1", "records") == str(B1_RECORDS)
    browser.find_element(By.LINK_TEXT, "a1").click()  # the name links to the topic's page
    WebDriverWait(browser, PAGE_LOAD_S).until(lambda d: d.find_elements(By.ID, "partitions"))
    assert browser.current_url == url + "/topics/a1"
    browser.save_screenshot(os.path.join(ARTIFACTS, "topic.png"))
    assert rows(browser, "partitions") == [str(p["partition"]) for p in parts]
    for p in parts:
        key = str(p["partition"])
        assert cell(browser, "partitions", key, "leader") == str(p["leader"])
        assert cell(browser, "partitions", key, "isr") == ", ".join(map(str, p["isr"]))
        assert cell(browser, "partitions", key, "hw") == f"{p['high_watermark']:,}"
        assert cell(browser, "partitions", key, "health") == "ok"

    load(browser, url + "/groups", "groups")
    assert cell(browser, "groups", "ga", "lag") == str(group.total_lag)
    load(browser, url + "/groups/ga", "group")
    for p in group.partitions:
        key = f"{p.topic}-{p.partition}"
        assert (cell(browser, "group-partitions", key, "committed"), cell(browser, "group-partitions", key, "lag")) \
            == (str(p.committed), str(p.lag))

    load(browser, url + "/smartmodules", "smartmodules")
    assert cell(browser, "smartmodules", "contains@1", "version") == "1"
    load(browser, url + "/policy", "policy")
    assert "No policy is in force" in text_of(browser, "#policy-state")
    assert "keeps no audit log" in text_of(browser, "#denials-none")

    load(browser, url + "/no/such/page", "not-found")
    assert text_of(browser, "main h1") == "404 Not found"
    assert "no console page at /no/such/page" in text_of(browser, "#error")


def test_tables_without_javascript(cluster: tuple[DataPlaneCluster, str], browser: webdriver.Chrome) -> None:
    _, url = cluster
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        load(browser, url + "/topics/a1", "topic-no-javascript")
        # The page's own script did not run (it marks <html> when it does; see the next test).
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-refreshing") is None
        assert rows(browser, "partitions") == ["0", "1"]
        assert cell(browser, "partitions", "0", "hw") == str(A1_RECORDS // 2)
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})


def test_a_page_refreshes_in_place(cluster: tuple[DataPlaneCluster, str], browser: webdriver.Chrome) -> None:
    """New records show up on the open topics page without a reload (the marker set on the
    window survives), with a rate of records in."""
    c, url = cluster
    load(browser, url + "/topics", "topics-before")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-refreshing") == "on"
    browser.execute_script("window.kolkMarker = 'still here'")
    before = int(cell(browser, "topics", "b1", "records"))

    async def produce() -> None:
        async with c.client() as client:
            producer = client.producer("b1", acks="all")
            for i in range(40):
                await producer.send(b"more-%d" % i)
            await producer.close()
            await wait_committed(client, "b1")
    run_async(produce)
    WebDriverWait(browser, WAIT_S).until(lambda d: cell(d, "topics", "b1", "records") == str(before + 40))
    assert browser.execute_script("return window.kolkMarker") == "still here"
    WebDriverWait(browser, WAIT_S).until(lambda d: rate(cell(d, "topics", "b1", "rate")) > 0)
    browser.save_screenshot(os.path.join(ARTIFACTS, "topics-live.png"))
