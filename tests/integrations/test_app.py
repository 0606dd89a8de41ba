"""The web demo (`vtimellm-hf app`) in a real browser: Debian's chromium, headless, driven by Selenium through the
system's chromedriver (no driver is downloaded). The app runs in this process on 127.0.0.1, with the tiny model
trained to answer the real video's queries, and every outgoing connection of the process is recorded.

The browser tests skip, saying why, only where chromium, chromedriver, selenium or gradio cannot be had
(`.ci/run` installs chromium; `make test` installs the `[app]` extra and selenium).
"""

import json
import shutil
import socket
import threading
import time

import pytest

from vtimellm_hf import cli
from vtimellm_hf.app import timeline_html
from vtimellm_hf.checkpoints import load_model_and_processor

from .conftest import ANSWERS, CAPTIONING_ANSWER, QUERIES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOCAL_SCHEMES = ("http://127.0.0.1:", "data:", "blob:")


def test_the_app_command_is_registered_without_gradio():
    # The parser imports every subcommand's module: `app` must not need gradio for that
    parser = cli.build_parser()
    args = parser.parse_args(["app", "--model", "some/checkpoint"])
    assert (args.host, args.port, args.examples) == ("127.0.0.1", 7860, [])


def test_timeline_places_and_lists_the_moments():
    page = timeline_html(40.0, [(10.0, 20.0, "a <b>door</b> opens"), (30.0, 40.0, "lights on")])
    assert 'data-start="10.0" data-end="20.0"' in page and "left:25.000%;width:25.000%" in page
    assert "left:75.000%;width:25.000%" in page
    assert "a &lt;b&gt;door&lt;/b&gt; opens" in page and "<b>" not in page
    assert "10.0 s - 20.0 s: a &lt;b&gt;door" in page and "<span>40.0 s</span>" in page
    assert "Upload or pick a video" in timeline_html(None)


@pytest.fixture(scope="module")
def outgoing_connections():
    """Every address the process connects to while the module's tests run; connections beyond this machine
    are refused as well as recorded."""
    addresses = []
    connect = socket.socket.connect

    def recording_connect(self, address):
        addresses.append(address)
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(address, tuple) and host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"the test refuses a connection to {address}")
        return connect(self, address)

    socket.socket.connect = recording_connect
    yield addresses
    socket.socket.connect = connect


@pytest.fixture(scope="module")
def served_app(answering_checkpoint, charades_video, outgoing_connections, tmp_path_factory):
    """The app of the answering checkpoint, served on a free port of 127.0.0.1; yields its URL and the app."""
    pytest.importorskip("gradio", reason="the web demo needs gradio (`pip install vtimellm-hf[app]`)")
    from vtimellm_hf.app import build_app

    model, processor = load_model_and_processor(str(answering_checkpoint), device="cpu")
    app = build_app(model, processor, examples=[charades_video])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(charades_video.parent)])  # fmt: skip
    yield f"http://127.0.0.1:{port}/", app
    app.close()


@pytest.fixture
def browser():
    """A headless chromium with its network log, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    session = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
    yield session
    session.quit()


def open_page(browser, url: str):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, 120)
    wait.until(lambda page: page.find_elements("css selector", "#video input[type=file]"))
    return wait


def answer_of(browser) -> str:
    return browser.find_element("css selector", "#answer textarea").get_attribute("value")


def moments_on_the_timeline(browser) -> list[tuple[float, float]]:
    moments = browser.find_elements("css selector", "#timeline .vtime-moment")
    return [(float(moment.get_attribute("data-start")), float(moment.get_attribute("data-end"))) for moment in moments]


def requested_urls(browser) -> set[str]:
    """Every URL the page requested, from chromium's network log."""
    urls = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


@pytest.mark.slow
def test_upload_ask_and_see_the_moment(served_app, browser, charades_video, outgoing_connections, tmp_path):
    url, _ = served_app
    wait = open_page(browser, url)
    browser.find_element("css selector", "#video input[type=file]").send_keys(str(charades_video))
    # Uploaded, decoded and encoded: the empty timeline spans the video's 31 s
    wait.until(lambda page: "31.0 s" in page.find_element("id", "timeline").text)
    browser.find_element("css selector", "#query textarea, #query input").send_keys(QUERIES[0])
    browser.find_element("id", "find").click()
    wait.until(lambda page: answer_of(page))
    # The trained answer "From 78 to 98." at 31 s: 0.78 x 31 to 0.98 x 31 seconds, drawn and sought
    assert answer_of(browser) == f"{ANSWERS[0]}\n24.2 s - 30.4 s"
    assert moments_on_the_timeline(browser) == [(0.78 * 31.0, 0.98 * 31.0)]
    wait.until(lambda page: page.execute_script("return document.querySelector('#video video').currentTime") > 24)
    assert browser.execute_script("return document.querySelector('#video video').currentTime") == pytest.approx(24.18)
    screenshot = tmp_path / "moment.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(PNG_MAGIC)

    browser.find_element("id", "describe").click()
    wait.until(lambda page: len(moments_on_the_timeline(page)) == 2)
    assert moments_on_the_timeline(browser) == [(0.0, 15.5), (15.5, 31.0)]  # the captioning convention
    listed = browser.find_element("id", "timeline").text
    assert "0.0 s - 15.5 s: a person opens the door" in listed
    assert "15.5 s - 31.0 s: a person turns a light on" in listed

    # Nothing beyond this machine: not the page's scripts, fonts or data, not the server
    assert [address for address in requested_urls(browser) if not address.startswith(LOCAL_SCHEMES)] == []
    assert all(address[0] in ("127.0.0.1", "::1") for address in outgoing_connections if isinstance(address, tuple))


@pytest.mark.slow
def test_a_file_that_is_not_a_video_is_refused_with_its_name(served_app, browser, tmp_path):
    url, _ = served_app
    not_a_video = tmp_path / "holiday.mp4"
    not_a_video.write_text("these are words, not frames")
    wait = open_page(browser, url)
    browser.find_element("css selector", "#video input[type=file]").send_keys(str(not_a_video))
    message = "holiday.mp4 is not a video this app can read; upload a video (.mp4, .webm, ...)."
    wait.until(lambda page: message in page.find_element("tag name", "body").text)


@pytest.mark.slow
def test_concurrent_users_wait_their_turn(served_app, browser, charades_video, monkeypatch):
    """Three users ask at once, two to find a moment and one for the events: the model runs one request at a time,
    and each gets its own answer."""
    import vtimellm_hf.app as app_module

    running, overlaps, calls = [0], [], []
    lock = threading.Lock()
    generate_answers = app_module.generate_answers

    def one_at_a_time(*args, **kwargs):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(0.5)  # long enough for the other user's request to arrive meanwhile
        try:
            answers = generate_answers(*args, **kwargs)
            calls.append(answers)
            return answers
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app_module, "generate_answers", one_at_a_time)
    url, _ = served_app
    tabs = []
    for query in [*QUERIES[:2], ""]:
        if tabs:
            browser.switch_to.new_window("tab")
        wait = open_page(browser, url)
        browser.find_element("css selector", "#video input[type=file]").send_keys(str(charades_video))
        wait.until(lambda page: "31.0 s" in page.find_element("id", "timeline").text)
        browser.find_element("css selector", "#query textarea, #query input").send_keys(query)
        tabs.append(browser.current_window_handle)
    for tab, button in zip(tabs, ["find", "find", "describe"], strict=True):  # all land before the first is done
        browser.switch_to.window(tab)
        browser.find_element("id", button).click()
    for tab, answer in zip(tabs, [*ANSWERS[:2], CAPTIONING_ANSWER], strict=True):
        browser.switch_to.window(tab)
        wait.until(lambda page: answer_of(page))
        assert answer_of(browser).startswith(answer)
    assert len(calls) == 3 and max(overlaps) == 1
