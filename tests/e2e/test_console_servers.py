"""The console in a real browser (headless Chromium) against servers set up for what can go
wrong: keys asked for, refused and fixed; writes disabled; a training job its server forgot; a
server that no longer answers; many tasks; files over the server's limits. Each test serves a
tiny model in this process (tests/e2e/thread_server.py); the walkthrough on the real model is
test_console_browser.py."""
from __future__ import annotations

import re
import time

import httpx
import pytest
from browser import answer_keys_dialog, by_id, chromium, open_view, require_chromium, upload, wait
from thread_server import serving
from tiny_server import adapter_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

require_chromium()     # else the module is skipped, saying what installs it

from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def test_a_server_with_an_api_key_asks_for_it_and_words_a_wrong_admin_key(browser, tmp_path):
    """Another server (a tiny model in this process) with both keys; the page starts with none."""
    with serving(tmp_path / "store", api_key="reader", admin_key="writer") as (app, url, bb):
        assert httpx.put(f"{url}/v1/adapters/tiny-task", content=adapter_file(bb, "tiny-task"),
                         headers={"Authorization": "Bearer writer"}).status_code == 201
        try:
            browser.get(url + "/")                 # another origin: its own, empty sessionStorage
            # the Try view lists the adapters at once: a 401, and the dialog says why
            wait(browser, lambda d: by_id(d, "key-dialog").is_displayed(), what="the key dialog")
            assert "API key" in by_id(browser, "key-message").text
            by_id(browser, "key-api").send_keys("reader")
            by_id(browser, "key-save").click()
            box = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#try-task-list input[value=tiny-task]"),
                       what="the task list, read with the key")[0]
            assert box.is_selected() and not by_id(browser, "try-error").text
            by_id(browser, "try-text").send_keys("a few words")
            by_id(browser, "try-submit").click()
            card = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result"), what="the answer")[0]
            want = httpx.post(f"{url}/v1/classify", json={"inputs": "a few words", "task": "tiny-task"},
                              headers={"Authorization": "Bearer reader"}).json()["results"][0][0]
            assert card.find_element(By.CSS_SELECTOR, ".answer").text == want["label"]
            # a delete with the API key only: 401, the dialog; a wrong admin key: the 403 in the API's words
            open_view(browser, "adapters")
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'button[aria-label="Delete tiny-task"]'))[0].click()
            by_id(browser, "confirm-yes").click()
            assert "admin key" in answer_keys_dialog(browser, "not-the-key")
            error = wait(browser, lambda d: by_id(d, "adapters-error").text, what="the 403 message")
            expected = httpx.delete(f"{url}/v1/adapters/tiny-task", headers={"Authorization": "Bearer not-the-key"})
            assert expected.status_code == 403 and error == f"403: {expected.json()['error']['message']}"
            assert httpx.get(f"{url}/v1/adapters/tiny-task", headers={"Authorization": "Bearer reader"}).status_code == 200
        finally:
            browser.get("about:blank")


def test_a_server_with_writes_disabled_says_so_without_asking_for_a_key(browser, tmp_path):
    """No admin key on the server: an upload is a 403 `writes_disabled` that no key would fix, so
    the page shows the server's words and does not ask for a key, even with one kept from before."""
    with serving(tmp_path / "store") as (app, url, bb):
        (tmp_path / "tiny.safetensors").write_bytes(adapter_file(bb, "tiny-task"))
        try:
            browser.get(url + "/")
            browser.execute_script("sessionStorage.setItem('lpt.adminKey', 'kept-from-another-server')")
            open_view(browser, "adapters")
            upload(browser, tmp_path / "tiny.safetensors", "tiny-task")
            error = wait(browser, lambda d: by_id(d, "adapters-error").text, what="the 403 message")
            expected = httpx.put(f"{url}/v1/adapters/tiny-task", content=b"x",
                                 headers={"Authorization": "Bearer kept-from-another-server"})
            assert expected.json()["error"]["type"] == "writes_disabled"
            assert error == f"403: {expected.json()['error']['message']}"
            assert not by_id(browser, "key-dialog").is_displayed()
        finally:
            browser.execute_script("sessionStorage.clear()")
            browser.get("about:blank")


def test_a_refused_key_can_be_fixed_from_the_keys_button_and_the_admin_key_alone_will_do(browser, tmp_path):
    """The list of tasks stayed "loading..." after a refused key, the error stayed after the key
    was fixed from the Keys button (nothing was loaded again), and the admin key alone did not
    answer the API key prompt (the README says it works wherever the API key does)."""
    with serving(tmp_path / "store", api_key="reader", admin_key="writer") as (app, url, bb):
        assert httpx.put(f"{url}/v1/adapters/tiny-task", content=adapter_file(bb, "tiny-task"),
                         headers={"Authorization": "Bearer writer"}).status_code == 201
        try:
            browser.get(url + "/")
            wait(browser, lambda d: by_id(d, "key-dialog").is_displayed(), what="the key dialog")
            by_id(browser, "key-cancel").click()                  # no key given: the 401 stays
            wait(browser, lambda d: by_id(d, "try-error").text.startswith("401: "), what="the 401")
            assert "could not be listed" in by_id(browser, "try-task-list").text
            by_id(browser, "keys-button").click()
            wait(browser, lambda d: by_id(d, "key-dialog").is_displayed(), what="the key dialog")
            by_id(browser, "key-admin").send_keys("writer")         # only the admin key
            by_id(browser, "key-save").click()
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#try-task-list input[value=tiny-task]"),
                 what="the task list, loaded again with the key")
            assert by_id(browser, "try-error").text == ""
            browser.execute_script("sessionStorage.clear()")
            open_view(browser, "adapters")                         # a 401 again: the dialog asks for the API key
            wait(browser, lambda d: by_id(d, "key-dialog").is_displayed(), what="the key dialog")
            assert "API key" in by_id(browser, "key-message").text
            by_id(browser, "key-admin").send_keys("writer")
            by_id(browser, "key-save").click()                     # the admin key answers it: retried
            wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '#adapters-table tr[data-name="tiny-task"]'),
                 what="the adapters, listed with the admin key")
            assert by_id(browser, "adapters-error").text == ""
        finally:
            browser.execute_script("sessionStorage.clear()")
            browser.get("about:blank")


def test_a_training_job_the_server_no_longer_knows_is_shown_as_such(browser, tmp_path):
    """A job shown running whose server restarted without a journal: its id is a 404 now. The
    page kept showing it running (and a dropped connection ended the polling)."""
    from lpt_server.train_jobs import TrainJob, UnknownJob

    with serving(tmp_path / "store", admin_key="writer") as (app, url, bb):
        job = TrainJob("tiny-task", [], tmp_path, tmp_path / "out.safetensors")
        job.state, job.started_at = "running", time.time()

        class Forgetful:      # lists the job, then (as after a restart) no longer knows it
            def list(self):
                return [job.view()]

            def get(self, job_id):
                raise UnknownJob(f"no training job {job_id!r}")
        rt = app.state.runtime
        real, rt.trainer = rt.trainer, Forgetful()
        try:
            browser.get(url + "/")
            browser.execute_script("sessionStorage.setItem('lpt.adminKey', 'writer')")
            open_view(browser, "train")
            wait(browser, lambda d: by_id(d, "job-state").text == "unknown", what="the job shown as unknown")
            assert f"no longer knows job {job.id}" in by_id(browser, "job-message").text
            assert not by_id(browser, "job-cancel").is_displayed()
            # another look at the list finds it running after all (another replica answered the
            # poll): it is followed again
            Forgetful.get = lambda self, job_id: job.view()
            by_id(browser, "jobs-refresh").click()
            wait(browser, lambda d: by_id(d, "job-state").text == "running", what="the job followed again")
            assert by_id(browser, "job-cancel").is_displayed()
        finally:
            rt.trainer = real
            browser.execute_script("sessionStorage.clear()")
            browser.get("about:blank")


def test_no_answer_from_the_server_is_worded_not_the_browsers_type_error(browser, tmp_path):
    with serving(tmp_path / "store", admin_key="writer") as (app, url, bb):
        assert httpx.put(f"{url}/v1/adapters/tiny-task", content=adapter_file(bb, "tiny-task"),
                         headers={"Authorization": "Bearer writer"}).status_code == 201
        browser.get(url + "/")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#try-task-list input[value=tiny-task]"))
    try:                                                           # the server is gone now
        by_id(browser, "try-text").send_keys("a few words")
        by_id(browser, "try-submit").click()
        error = wait(browser, lambda d: by_id(d, "try-error").text, what="the message")
        assert error.startswith("No answer from the server") and "TypeError" not in error, error
        assert by_id(browser, "try-submit").is_enabled()
    finally:
        browser.get("about:blank")


def test_many_tasks_get_a_filter_that_keeps_the_checked_ones(browser, tmp_path):
    with serving(tmp_path / "store", admin_key="writer") as (app, url, bb):
        names = [f"topic-{i:02d}" for i in range(12)] + ["sentiment-x"]
        for name in names:
            assert httpx.put(f"{url}/v1/adapters/{name}", content=adapter_file(bb, name),
                             headers={"Authorization": "Bearer writer"}).status_code == 201
        try:
            browser.get(url + "/")
            wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#try-task-list input")) == 13)
            browser.find_element(By.CSS_SELECTOR, "#try-task-list input[value=topic-05]").click()   # checked
            box = by_id(browser, "try-filter")
            assert box.is_displayed()
            box.send_keys("senti")
            shown = [s.find_element(By.TAG_NAME, "input").get_attribute("value")
                     for s in browser.find_elements(By.CSS_SELECTOR, "#try-task-list .check") if s.is_displayed()]
            assert shown == ["sentiment-x", "topic-05"], shown     # the match, and a checked task kept in view
            # below 12 tasks the box goes, and so does its filter
            for name in ("topic-10", "topic-11"):
                assert httpx.delete(f"{url}/v1/adapters/{name}", headers={"Authorization": "Bearer writer"}).status_code == 204
            open_view(browser, "adapters")
            open_view(browser, "try")
            wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#try-task-list input")) == 11)
            assert not by_id(browser, "try-filter").is_displayed()
            assert all(s.is_displayed() for s in browser.find_elements(By.CSS_SELECTOR, "#try-task-list .check"))
            open_view(browser, "try")
            # on a short screen the answer comes into view (it is below the form and the list)
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": 800, "height": 420, "deviceScaleFactor": 1, "mobile": False})
            by_id(browser, "try-text").send_keys("a few words")
            by_id(browser, "try-submit").click()
            card = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".result"), what="the answer")[0]
            top, bottom = browser.execute_script("const r = arguments[0].getBoundingClientRect(); "
                                                 "return [r.top, r.bottom];", card)
            assert 0 <= top < 420 and bottom > 0, (top, bottom)
        finally:
            browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            browser.get("about:blank")


def test_a_file_over_the_servers_limit_is_refused_before_it_is_sent(browser, tmp_path):
    """A 70 MB file went up whole before the server's 413: the page reads the limits from /info."""
    with serving(tmp_path / "store", admin_key="writer", max_adapter_bytes=2000, max_train_bytes=3000) as (app, url, bb):
        big = tmp_path / "big.safetensors"
        big.write_bytes(b"x" * 2500)
        data = tmp_path / "big.csv"
        data.write_text("text,label\n" + "a few words,pos\n" * 250)          # 4,011 bytes
        try:
            browser.get(url + "/")
            browser.execute_script("sessionStorage.setItem('lpt.adminKey', 'writer')")
            open_view(browser, "adapters")
            upload(browser, big, "big")
            error = wait(browser, lambda d: by_id(d, "adapters-error").text, what="the message")
            assert error == "big.safetensors is 2.4 KiB, over the server's limit of 2.0 KiB (LPT_MAX_ADAPTER_BYTES).", error
            open_view(browser, "train")
            by_id(browser, "train-data").send_keys(str(data))
            wait(browser, lambda d: "columns" in by_id(d, "train-columns-note").text, what="the columns")
            by_id(browser, "train-submit").click()
            error = wait(browser, lambda d: by_id(d, "train-error").text, what="the message")
            assert error == "big.csv is 3.9 KiB, over the server's limit of 2.9 KiB (LPT_MAX_TRAIN_BYTES).", error
        finally:
            browser.execute_script("sessionStorage.clear()")
            browser.get("about:blank")


def _progress_while(browser, line_id: str, error_id: str) -> list[tuple[int, str]]:
    """(bar value, words) of the progress line each 0.1 s while it shows, until the error line fills."""
    seen, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline and not by_id(browser, error_id).text:
        if by_id(browser, line_id).is_displayed():       # the bar and its words in one read: they move together
            seen.append(tuple(browser.execute_script(
                "const p = document.getElementById(arguments[0]);"
                "return [p.querySelector('progress').value, p.querySelector('span').textContent];", line_id)))
        time.sleep(0.1)
    return seen


def test_uploads_show_their_progress_and_clear_it(browser, tmp_path):
    """A 3 MiB adapter file and a 2 MiB training file over a link throttled to 1 MiB/s: the bar and
    "Uploading NAME: ... of SIZE (N%)" move while the body goes out; afterwards the line is gone
    and the server's answer shown (both files are refused once they are in: nothing is kept)."""
    with serving(tmp_path / "store", admin_key="writer") as (app, url, bb):
        big = tmp_path / "big.safetensors"
        big.write_bytes(b"x" * (3 << 20))                   # not an adapter: the server's 400 ends it
        data = tmp_path / "one-label.csv"
        data.write_text("text,label\n" + "a few more words,pos\n" * (2 << 16))    # one label only: a 400
        size = data.stat().st_size
        small = tmp_path / "small.safetensors"
        small.write_bytes(b"y" * 1000)
        try:
            browser.get(url + "/")
            open_view(browser, "adapters")                     # no key yet: the 401 opens the key dialog
            upload(browser, small, "small")
            wait(browser, lambda d: by_id(d, "key-dialog").is_displayed(), what="the key dialog")
            assert by_id(browser, "upload-progress").text == "small.safetensors: waiting for the key..."
            answer_keys_dialog(browser, "writer")                # sent again with the key: refused as not an adapter
            wait(browser, lambda d: by_id(d, "adapters-error").text.startswith("400:"), what="the refusal")
            browser.get(url + "/")
            browser.execute_cdp_cmd("Network.enable", {})
            browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
                "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1 << 20})
            open_view(browser, "adapters")
            upload(browser, big, "big")
            seen = _progress_while(browser, "upload-progress", "adapters-error")
            error = by_id(browser, "adapters-error").text
            assert error.startswith("400: invalid adapter file"), error
            assert not by_id(browser, "upload-progress").is_displayed()
            partway = [(v, t) for v, t in seen if 0 < v < 3 << 20]
            assert len({v for v, _ in partway}) >= 3, seen       # it moved, more than once
            assert all(re.fullmatch(r"Uploading big\.safetensors: \S+ \S+ of 3\.0 MiB \(\d+%\)", t) for _, t in partway), \
                partway

            open_view(browser, "train")
            by_id(browser, "train-data").send_keys(str(data))
            wait(browser, lambda d: "columns" in by_id(d, "train-columns-note").text, what="the columns")
            by_id(browser, "train-submit").click()
            seen = _progress_while(browser, "train-progress", "train-error")
            error = by_id(browser, "train-error").text
            assert error.startswith("400:") and "label" in error, error
            assert not by_id(browser, "train-progress").is_displayed()
            partway = [(v, t) for v, t in seen if 0 < v < size]
            assert len({v for v, _ in partway}) >= 2 and all(t.startswith("Uploading one-label.csv: ")
                                                             for _, t in partway), seen
        finally:
            browser.execute_cdp_cmd("Network.emulateNetworkConditions", {
                "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
            browser.execute_script("sessionStorage.clear()")
            browser.get("about:blank")
