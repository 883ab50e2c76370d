"""The browser page, driven in real headless Chromium (Debian's `chromium` through Playwright's
``executable_path``; `sh tests/install_browser.sh` installs it) against a real `tda serve` over a
real index of LAMA sentences, and against `tda view` over two real report files written by
`tda search --format pair`.

The corpus also holds texts with ``<script>``, ``<img onerror>`` and ``javascript:`` markup (one
under an id full of URL and HTML syntax): they are searched in the browser and must be shown
literally, with no dialog and no console error. Every test fails, never skips, when the browser
is missing. Screenshots go to docs/screenshots/ with TDA_SCREENSHOTS=1 (the README shows them),
else to the test's tmp_path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tda.tests import helpers
from tda.tests.indexing import env, free_port, stop, tda, wait_healthy

CHROMIUM = "/usr/bin/chromium"
TOKEN = "viewer-T0ken_%&/?#"            # URL syntax in it: any leak into a URL is visible
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
EVIL_ID = "evil/<b>id</b>?a=1&b=2"
HOSTILE = {
    EVIL_ID: "Zorblax Quenn <script>alert(1)</script> was born in Quuxville.",
    "evil-img": "Zorblax Quenn <img src=x onerror=alert(1)> was born in Quuxville in 1901.",
    "evil-link": 'Zorblax Quenn <a href="javascript:alert(1)">x</a> was born in Quuxville.',
}
FACTS = 40
TIMEOUT_MS = 60_000
RELATIONS = ("P19", "P1412", "P176", "P140")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def facts():
    return helpers.fact_sentences(FACTS, RELATIONS)


@pytest.fixture(scope="module")
def index(tmp_path_factory, gpt2_dir, facts):
    """TrackStar + BM25 over 40 real fact sentences (ids s0..s39) and the hostile texts, with a
    `train` correction profile."""
    corpus = tmp_path_factory.mktemp("viewer-corpus") / "c.jsonl"
    with corpus.open("w") as f:
        for i, (_, sentence) in enumerate(facts):
            f.write(json.dumps({"id": f"s{i}", "text": sentence}) + "\n")
        for doc_id, text in HOSTILE.items():
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    out = tmp_path_factory.mktemp("viewer-index") / "index"
    tda("index", "--model", str(gpt2_dir), "--corpus", str(corpus), "--out", str(out),
        "--shard-size", "20", "--max-len", "128", "--projection-dim", "6", "--no-progress")
    tda("precondition", str(out), "--name", "train", "--mode", "train")
    return out


@pytest.fixture(scope="module")
def reports(index, facts, tmp_path_factory):
    """Two real report files: `tda search --queries Q --format pair` in trackstar and in bm25
    mode, the queries being the indexed LAMA facts (prompt from the relation's template, the
    object as target, the fact's sentence as ground truth)."""
    from tda.evaluation.prepare import make_prompt
    templates = {}
    for line in (helpers.LAMA / "relations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        templates[rec["relation"]] = rec["template"]
    work = tmp_path_factory.mktemp("reports")
    queries = work / "queries.jsonl"
    with queries.open("w") as f:
        for i, (fact, _) in enumerate(facts):
            f.write(json.dumps({"id": f"trex-{fact.uuid}", "relation": fact.relation,
                                "prompt": make_prompt(templates[fact.relation], fact.subject),
                                "target": " " + fact.object, "proponents": [f"s{i}"]}) + "\n")
    out = work / "runs"
    out.mkdir()
    for mode in ("trackstar", "bm25"):
        res = tda("search", "--queries", str(queries), "--index", str(index), "--mode", mode,
                  "-k", "10", "--format", "pair", "--opponents", "3")
        (out / f"{mode}.jsonl").write_text(res.stdout)
    return out


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tda.cli", *args, "--port", str(port)],
                            env=env(), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, log, timeout=240)
    return proc, url


def _stop(proc: subprocess.Popen, log: Path) -> None:
    stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def live(index, reports, tmp_path_factory):
    """`tda serve INDEX --reports DIR`, no token."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    proc, url = _start(["serve", str(index), "--reports", str(reports)], log)
    yield url
    _stop(proc, log)


@pytest.fixture(scope="module")
def viewer(reports, tmp_path_factory):
    """`tda view DIR --token TOKEN`: reports only, no index, no model."""
    log = tmp_path_factory.mktemp("view") / "stderr.txt"
    proc, url = _start(["view", str(reports), "--token", TOKEN], log)
    yield url
    _stop(proc, log)


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), (f"{CHROMIUM} is missing: run `sh tests/install_browser.sh` "
                                     f"(Debian's chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


class Watched:
    """A page with every dialog, console error, page error and request URL recorded."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1500, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.requests: list[tuple[str, dict]] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append((r.url, r.headers)))

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def assert_clean(self) -> None:
        assert not self.dialogs, self.dialogs
        assert not self.errors, self.errors


@pytest.fixture
def watched(browser):
    w = Watched(browser)
    yield w
    w.context.close()


def shot(page, name: str, tmp_path: Path) -> Path:
    folder = SCREENSHOTS if os.environ.get("TDA_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path))       # the viewport: 1500 x 1000
    assert path.stat().st_size > 10_000
    return path


def search(page, prompt: str, target: str | None = None, mode: str | None = None) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_role("textbox", name="Target").fill(target or "")
    if mode:
        page.get_by_label("Mode", exact=True).select_option(mode)
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#search-status")).to_contain_text("Target", timeout=TIMEOUT_MS)


def column(page, name: str):
    return page.locator(f'section.column[data-list="{name}"]')


def log_in(w: Watched, url: str) -> None:
    w.page.goto(url + "/")
    w.page.get_by_label("Bearer token").fill(TOKEN)
    w.page.get_by_role("button", name="Use token").click()


# ----------------------------------------------------------------------------- live page
def test_search_fills_three_columns_and_opens_a_document(live, watched, tmp_path):
    page = watched.page
    page.goto(live + "/")
    expect(page.get_by_label("Profile")).to_contain_text("train")
    search(page, "Allan Peiper was born in", " Alexandra")
    for name in ("trackstar", "bm25", "fused"):
        expect(column(page, name).locator(".hit")).to_have_count(10)
    status = page.locator("#search-status")
    expect(status).to_contain_text("(given)")
    first_bm25 = column(page, "bm25").locator(".hit").first
    # rank in the other lists, id, the query's words marked
    expect(first_bm25.locator(".others")).to_contain_text("TrackStar")
    expect(first_bm25.locator(".hit-id")).to_have_text("s0")
    expect(first_bm25.locator("mark.t")).to_contain_text("Alexandra")
    expect(first_bm25.locator("mark.q").first).to_be_visible()
    first_bm25.get_by_role("button", name="Open document s0").click()
    dialog = page.locator("#doc-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#doc-text")).to_contain_text("Allan Peiper")
    expect(dialog.locator("#doc-meta")).to_contain_text("tokens")
    page.get_by_role("button", name="Close document").click()
    expect(dialog).to_be_hidden()
    # without a target: the model's own continuation, and the page says so
    search(page, "The official language of Austria is", None, "trackstar")
    expect(status).to_contain_text("the model's own greedy continuation")
    expect(column(page, "trackstar").locator(".hit")).to_have_count(10)
    expect(column(page, "bm25")).to_contain_text("Not searched in mode trackstar")
    search(page, "Allan Peiper was born in", " Alexandra", "both")
    shot(page, "viewer-search.png", tmp_path)
    watched.assert_clean()


def test_hostile_texts_are_shown_literally_and_never_run(live, watched):
    page = watched.page
    page.goto(live + "/")
    search(page, "Zorblax Quenn was born in", " Quuxville", "both")
    bm25 = column(page, "bm25")
    expect(bm25.locator(".hit")).to_have_count(10)
    for doc_id, text in HOSTILE.items():
        hit = bm25.locator(f'.hit[data-id="{doc_id}"]')
        expect(hit).to_have_count(1)
        expect(hit.locator(".hit-text")).to_have_text(text)     # literally, markup and all
    # nothing became an element: no script, img or link anywhere in the results
    assert page.locator("#results script, #results img, #results a, #results iframe").count() == 0
    bm25.get_by_role("button", name=f"Open document {EVIL_ID}").click()
    expect(page.locator("#doc-title")).to_have_text(EVIL_ID)
    expect(page.locator("#doc-text")).to_have_text(HOSTILE[EVIL_ID])
    assert page.locator("#doc-dialog script, #doc-dialog img, #doc-dialog a").count() == 0
    page.keyboard.press("Escape")
    expect(page.locator("#doc-dialog")).to_be_hidden()
    page.wait_for_timeout(300)                       # give any injected handler its chance
    assert page.evaluate("typeof window.alert") == "function"
    watched.assert_clean()


def test_salience_is_drawn_as_a_heat_map(live, watched):
    page = watched.page
    page.goto(live + "/")
    expect(page.get_by_label("Token salience")).to_be_checked()
    sent = []
    page.on("request", lambda r: r.url.endswith("/search") and sent.append(r.post_data_json))
    search(page, "Allan Peiper was born in", " Alexandra", "both")
    assert sent and sent[-1]["explain"] is True
    first = column(page, "trackstar").locator(".hit").first
    words = first.locator(".salience .w")
    expect(words.first).to_be_visible()
    assert words.count() >= 3
    expect(page.locator("#legend")).to_be_visible()
    value = float(words.first.get_attribute("data-value"))
    shown = words.first.get_attribute("title").rsplit(": ", 1)[1].replace("\u2212", "-")
    assert float(shown) == pytest.approx(value, rel=5e-3)          # the tooltip's value
    colours = {words.nth(i).evaluate("e => getComputedStyle(e).backgroundColor")
               for i in range(words.count())}
    assert len(colours) > 1                            # a heat map, not one colour
    # the words' values are drawn from the response: their sum is the hit's salience score
    resp = httpx.post(live + "/search", json={"prompt": "Allan Peiper was born in",
                                              "target": " Alexandra", "explain": True},
                      timeout=120).json()
    sal = resp["trackstar"][0]["salience"]
    assert first.locator(".salience").inner_text() == sal["text"]
    assert words.count() == sum(1 for w in sal["words"] if w["end"] > w["start"])
    assert float(words.first.get_attribute("data-value")) == next(
        w["value"] for w in sal["words"] if w["end"] > w["start"])
    # BM25 and fused hits have no salience
    assert column(page, "bm25").locator(".salience").count() == 0
    watched.assert_clean()


def test_keyboard_alone(live, watched):
    page = watched.page
    page.goto(live + "/")
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()          # the page starts there
    page.keyboard.type("Allan Peiper was born in")
    page.keyboard.press("Tab")
    page.keyboard.type(" Alexandra")
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    page.keyboard.press("Enter")                                # Enter in the prompt searches
    expect(column(page, "fused").locator(".hit")).to_have_count(10)
    focused = lambda: page.evaluate(  # noqa: E731
        "() => { const h = document.activeElement.closest('.hit');"
        " return h ? [h.dataset.col, h.dataset.row] : null; }")
    # Tab from the form reaches the first hit (the one hit in the tab order)
    page.keyboard.press("Shift+Tab")          # back from the prompt to the tabs, then forwards
    for _ in range(40):
        page.keyboard.press("Tab")
        if focused() is not None:
            break
    assert focused() == ["0", "0"]
    page.keyboard.press("ArrowDown")
    page.keyboard.press("j")
    assert focused() == ["0", "2"]
    page.keyboard.press("k")
    assert focused() == ["0", "1"]
    page.keyboard.press("ArrowRight")
    assert focused() == ["1", "1"]
    page.keyboard.press("l")
    assert focused() == ["2", "1"]
    page.keyboard.press("ArrowLeft")
    assert focused() == ["1", "1"]
    hit_id = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("Enter")                                 # open the document
    expect(page.locator("#doc-dialog")).to_be_visible()
    expect(page.locator("#doc-title")).to_have_text(hit_id)
    page.keyboard.press("Escape")                                # and close it
    expect(page.locator("#doc-dialog")).to_be_hidden()
    assert focused() == ["1", "1"]                               # back on the hit
    page.keyboard.press("/")
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    watched.assert_clean()


def _unnamed_controls(page) -> list[str]:
    """Controls in Chromium's accessibility tree without an accessible name."""
    cdp = page.context.new_cdp_session(page)
    nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    roles = {"button", "textbox", "combobox", "checkbox", "spinbutton", "searchbox", "link",
             "listbox", "radio", "slider", "switch", "tab", "menuitem"}
    out = []
    for n in nodes:
        role = (n.get("role") or {}).get("value")
        if role in roles and not n.get("ignored"):
            name = ((n.get("name") or {}).get("value") or "").strip()
            if not name:
                out.append(f"{role} {n.get('backendDOMNodeId')}")
    return out


def test_every_control_has_an_accessible_name(live, watched):
    page = watched.page
    page.goto(live + "/")
    for role, name in (("textbox", "Prompt"), ("spinbutton", "k"), ("combobox", "Mode"),
                       ("combobox", "Profile"), ("checkbox", "Token salience"),
                       ("button", "Search"), ("button", "Live search"), ("button", "Reports")):
        expect(page.get_by_role(role, name=name, exact=True)).to_be_visible()
    expect(page.get_by_role("textbox", name="Target")).to_be_visible()
    search(page, "Allan Peiper was born in", " Alexandra", "both")
    expect(page.get_by_role("button", name="Open document s0").first).to_be_visible()
    assert _unnamed_controls(page) == []
    page.get_by_role("button", name="Open document s0").first.click()
    expect(page.get_by_role("button", name="Close document")).to_be_visible()
    assert _unnamed_controls(page) == []
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Reports").click()
    expect(page.locator("#query-table tbody tr").first).to_be_visible()
    page.locator("#query-table tbody button").first.click()
    expect(page.locator("#query-detail .passage").first).to_be_visible()
    for name in ("Method", "Compare with", "Relation", "Correctness", "Model knows the fact",
                 "Text"):
        expect(page.get_by_label(name, exact=True)).to_be_visible()
    assert _unnamed_controls(page) == []
    watched.assert_clean()


def test_page_headers_and_no_markup_from_data(live):
    """The page and its assets carry the CSP; only the listed files are served; the script
    never builds markup from strings."""
    for path in ("/", "/static/app.js", "/static/app.css", "/static/favicon.svg"):
        r = httpx.get(live + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        for part in ("script-src 'self'", "object-src 'none'", "base-uri 'none'",
                     "frame-ancestors 'none'", "default-src 'none'"):
            assert part in csp, (path, csp)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/static/index.html", "/static/../server.py", "/static/%2e%2e%2fserver.py",
                 "/static/", "/static/app.js.map"):
        assert httpx.get(live + path).status_code == 404, path
    html = httpx.get(live + "/").text
    assert "<script src=\"/static/app.js\"" in html and "onclick" not in html.lower()
    assert "<script>" not in html and "style=" not in html
    js = httpx.get(live + "/static/app.js").text
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in js, sink
    assert httpx.get(live + "/config").json()["search"] is True


# ----------------------------------------------------------------------------- reports
def test_token_is_asked_for_and_never_put_in_a_url(viewer, watched):
    page = watched.page
    page.goto(viewer + "/")
    token_box = page.get_by_label("Bearer token")
    expect(token_box).to_be_visible()
    assert token_box.get_attribute("type") == "password"
    # the page and its assets loaded without the token
    for url, headers in watched.requests:
        assert "authorization" not in headers, url
    page.get_by_label("Bearer token").fill("wrong")
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#token-error")).to_contain_text("refused")
    watched.errors.clear()              # the browser logs the refused request (a 401)
    before = len(watched.requests)
    page.get_by_label("Bearer token").fill(TOKEN)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#runs-table tbody tr")).to_have_count(2)
    expect(page.get_by_role("button", name="Search")).to_be_hidden()  # no index: no search
    page.locator("#query-table tbody button").first.click()
    expect(page.locator("#query-detail .passage").first).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('tda-token')") == TOKEN
    api = [(u, h) for u, h in watched.requests[before:] if "/reports" in u or "/config" in u]
    assert len(api) >= 3
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, h in api)
    from urllib.parse import quote
    for url, _ in watched.requests:
        for form in (TOKEN, quote(TOKEN), quote(TOKEN, safe=""), "wrong"):
            assert form not in url, url
    watched.assert_clean()


def test_reports_filter_open_and_compare(viewer, reports, watched, facts, tmp_path):
    page = watched.page
    log_in(watched, viewer)
    runs = page.locator("#runs-table tbody tr")
    expect(runs).to_have_count(2)
    expect(runs.nth(0)).to_contain_text("bm25")
    expect(runs.nth(1)).to_contain_text("trackstar")
    page.get_by_label("Method", exact=True).select_option("trackstar")
    rows = page.locator("#query-table tbody tr")
    expect(rows).to_have_count(FACTS)
    # per-query metrics are pair_metrics' values for that record
    from tda.evaluation.pair_format import pair_metrics, read_pair_jsonl
    # filters: relation, correctness, model knows, free text
    page.get_by_label("Relation", exact=True).select_option("P19")
    n_p19 = sum(1 for f, _ in facts if f.relation == "P19")
    expect(rows).to_have_count(n_p19)
    page.get_by_label("Relation", exact=True).select_option("")
    page.get_by_label("Model knows the fact", exact=True).select_option("unknown")
    expect(rows).to_have_count(0)                  # trackstar: every query has model_knows
    page.get_by_label("Model knows the fact", exact=True).select_option("")
    page.get_by_label("Correctness", exact=True).select_option("top")
    top = page.locator("#query-table tbody tr").count()
    page.get_by_label("Correctness", exact=True).select_option("none")
    none = page.locator("#query-table tbody tr").count()
    page.get_by_label("Correctness", exact=True).select_option("some")
    some = page.locator("#query-table tbody tr").count()
    assert some + none == FACTS and top <= some
    page.get_by_label("Correctness", exact=True).select_option("")
    fact, sentence = facts[0]
    page.get_by_label("Text", exact=True).fill(fact.subject)
    expect(rows.first).to_contain_text(fact.subject)
    # open a query: prompt, target, ground truth, proponents with marks and scores
    rows.first.get_by_role("button").click()
    detail = page.locator("#query-detail")
    expect(detail).to_contain_text(fact.subject)
    expect(detail).to_contain_text(fact.object)
    expect(detail.locator("dd").filter(has_text="s0").first).to_be_visible()
    passages = detail.locator("section.column > .passages > .passage")
    expect(passages).to_have_count(10)
    marks = passages.locator(".mark-ok, .mark-bad")
    expect(marks).to_have_count(10)
    # compare with bm25 on the same query: two columns side by side
    page.get_by_label("Compare with", exact=True).select_option("bm25")
    expect(detail.locator("section.column")).to_have_count(2)
    bm25 = detail.locator('section.column[data-run="bm25"] > .passages > .passage')
    expect(bm25).to_have_count(10)
    expect(detail.locator('section.column[data-run="bm25"] details .passage')).to_have_count(0)
    expect(detail.locator('section.column[data-run="trackstar"] details .passage')
           ).to_have_count(3)                      # the trackstar run's 3 opponents
    # BM25 ranks the fact's own sentence first (it shares the subject's words)
    bm25_first = bm25.first
    expect(bm25_first.locator(".mark-ok")).to_have_count(1)
    expect(page.locator("#compare-summary")).to_contain_text("trackstar vs bm25")
    # the metrics shown are pair_metrics' for the query's records
    recs = {m: next(r for r in read_pair_jsonl(reports / f"{m}.jsonl")
                    if r.example_id == f"trex-{fact.uuid}") for m in ("trackstar", "bm25")}
    cells = page.locator("#query-table tbody tr").first.locator("td.num")
    expect(cells.first).to_contain_text(" | ")
    for cell, name in zip(cells.all(), ("mrr_first", "recall@10", "precision@10")):
        shown = [float(x) for x in cell.inner_text().split(" | ")]
        want = [pair_metrics([recs[m]])[name] for m in ("trackstar", "bm25")]
        assert shown == pytest.approx(want, abs=0.006), name
    page.get_by_label("Text", exact=True).fill("")
    rows.nth(1).get_by_role("button").click()
    expect(detail.locator("section.column")).to_have_count(2)
    shot(page, "viewer-reports.png", tmp_path)
    watched.assert_clean()


def test_view_refuses_a_directory_without_reports(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    (empty / "notes.txt").write_text("no results")
    out = tda("view", str(empty), "--port", str(free_port()), check=False, timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert str(empty) in out.stderr and ".jsonl" in out.stderr
    out = tda("view", str(tmp_path / "missing"), "--port", "1", check=False, timeout=60)
    assert out.returncode == 1 and "missing" in out.stderr
