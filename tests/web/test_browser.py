"""The web UI in real headless Chromium (Debian's package) driven by Playwright, over the real app:
real ingest of five shared-data packages, the real tiny encoder, real FAISS indexes, uvicorn on a
free 127.0.0.1 port with the in-process re-index worker. One server and one browser per module.

Screenshots land in tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from web_fixtures import (
    API_KEY,
    ARTIFACTS,
    BASE_PACKAGES,
    CHROMIUM,
    CHROMIUM_ARGS,
    build_web_home,
    serve,
    web_settings,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
    ),
]

NEW_PACKAGE = "elife-54296"  # added through the add page: 1 figure with an image
TIMEOUT_MS = 60_000


@dataclass
class Site:
    """The running service under test."""

    url: str
    home: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, shared_data: Path) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("web") / "home"
    packages = [shared_data / "jats" / "packages" / f"{name}.tar.gz" for name in BASE_PACKAGES]
    build_web_home(home, tiny_model_dir, packages)
    with serve(web_settings(home, tiny_model_dir)) as url:
        yield Site(url, home)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Errors the page logged (script errors, CSP violations, failed loads): tests assert none."""
    return []


@pytest.fixture
def page(browser: object, site: Site, console_errors: list[str]) -> Iterator[object]:
    context = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    pg.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: console_errors.append(f"page error: {exc}"))
    yield pg
    context.close()


def shot(page: object, name: str) -> Path:
    """Save a full-page screenshot as tests/artifacts/web-<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"web-{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def loaded_images(page: object, selector: str) -> list[int]:
    """naturalWidth of every <img> matching ``selector`` (0 = not loaded / broken)."""
    return page.eval_on_selector_all(  # type: ignore[attr-defined,no-any-return]
        selector, "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
    )


def wait_images(page: object, selector: str) -> None:
    wait_js(
        page,
        "sel => { const imgs = [...document.querySelectorAll(sel)];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        selector,
    )


def wait_js(page: object, expression: str, arg: object = None, timeout_s: float = 60.0) -> None:
    """Poll ``expression`` (a JS function of ``arg``) until it is truthy. (``wait_for_function`` evaluates
    strings with eval, which the pages' content security policy rightly forbids.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression, arg):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def card_ids(page: object) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#results .card", "cards => cards.map(c => c.dataset.figureId)"
    )]


# --- the pages' headers -----------------------------------------------------------------------------


def test_pages_have_a_csp_without_inline_script(site: Site) -> None:
    with httpx.Client(base_url=site.url, timeout=60) as client:
        for path in ("/", "/add", "/figures/1", "/articles/1"):
            resp = client.get(path)
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
            csp = resp.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert "<script>" not in resp.text and " style=" not in resp.text and "http://" not in resp.text
        assert client.get("/figures/999999").status_code == 404
        assert client.get("/static/../pages.py").status_code == 404
        assert client.get("/static/common.js").headers["content-type"].startswith("text/javascript")


# --- search -------------------------------------------------------------------------------------------


def test_text_search_shows_thumbnails_highlights_terms_and_pages(page: object, console_errors: list[str]) -> None:
    page.goto("/")  # type: ignore[attr-defined]
    assert page.locator("#empty-state").is_hidden()  # type: ignore[attr-defined]
    assert "15 figures indexed" in page.inner_text("#intro")  # type: ignore[attr-defined]
    # keyboard only: the skip link, then Tab reaches the query box (found by its label), Enter submits
    page.keyboard.press("Tab")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.keyboard.press("Tab")  # type: ignore[attr-defined]
    query_box = page.get_by_label("Describe the figure you are looking for")  # type: ignore[attr-defined]
    assert query_box.evaluate("el => el === document.activeElement")
    page.keyboard.type("Leptospira membrane diameter")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
    page.select_option("#per-page", "12")  # type: ignore[attr-defined]
    wait_js(page, "() => document.querySelectorAll('#results .card').length === 12")
    wait_images(page, "#results .card img")
    assert all(w > 0 for w in loaded_images(page, "#results .card img"))
    assert "q=Leptospira+membrane+diameter" in page.url  # type: ignore[attr-defined]
    # every card: label, article, journal + year, score; the query's words highlighted in the captions
    first = page.locator("#results .card").first  # type: ignore[attr-defined]
    assert re.search(r"#1 · score -?\d\.\d{3}", first.inner_text())
    marks = [m.lower() for m in page.eval_on_selector_all("#results mark", "ms => ms.map(m => m.textContent)")]  # type: ignore[attr-defined]
    assert marks and all(m.startswith(("leptospira", "membrane", "diameter")) for m in marks), marks
    shot(page, "search-text")

    page1 = card_ids(page)
    assert page.is_enabled("#next-page") and not page.is_enabled("#prev-page")  # type: ignore[attr-defined]
    page.click("#next-page")  # type: ignore[attr-defined]
    wait_js(page, "() => document.querySelector('#page-info').textContent === 'Page 2'")
    page.wait_for_selector("#results[aria-busy]", state="detached")  # type: ignore[attr-defined]
    page2 = card_ids(page)
    assert len(page2) == 3 and not set(page1) & set(page2)  # 15 figures with images: 12 + 3
    assert "offset=12" in page.url and not page.is_enabled("#next-page")  # type: ignore[attr-defined]
    assert page.locator("#results .card").first.inner_text().count("#13") == 1  # type: ignore[attr-defined]
    page.go_back()  # type: ignore[attr-defined]
    wait_js(page, "() => document.querySelector('#page-info').textContent === 'Page 1'")
    page.wait_for_selector("#results[aria-busy]", state="detached")  # type: ignore[attr-defined]
    assert card_ids(page) == page1
    assert console_errors == []


def test_filters_by_journal_and_year(page: object, console_errors: list[str]) -> None:
    page.goto("/?q=figure&k=48")  # type: ignore[attr-defined]
    page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
    assert len(card_ids(page)) == 15
    page.get_by_label("Journal").fill("PLoS ONE")  # type: ignore[attr-defined]
    page.get_by_label("Journal").press("Enter")  # type: ignore[attr-defined]
    wait_js(page, "() => document.querySelectorAll('#results .card').length === 3")
    sources = page.eval_on_selector_all("#results .article-source", "ns => ns.map(n => n.textContent)")  # type: ignore[attr-defined]
    assert sources and all(s.startswith("PLoS ONE") for s in sources), sources
    assert "journal=PLoS+ONE" in page.url  # type: ignore[attr-defined]
    # a year range with no articles: a clear "nothing matched" message, not an error
    page.get_by_label("Journal").fill("")  # type: ignore[attr-defined]
    page.get_by_label("Year from").fill("1900")  # type: ignore[attr-defined]
    page.get_by_label("to", exact=True).fill("1901")  # type: ignore[attr-defined]
    page.get_by_label("to", exact=True).press("Enter")  # type: ignore[attr-defined]
    wait_js(page, "() => document.querySelector('#status').textContent.includes('Try clearing the filters')")
    assert card_ids(page) == [] and page.locator("#error").is_hidden()  # type: ignore[attr-defined]
    shot(page, "search-filters-empty")
    assert console_errors == []


def test_image_upload_search_finds_the_same_figure_and_switches_to_captions(
    page: object, shared_data: Path, console_errors: list[str]
) -> None:
    image = shared_data / "jats" / "pone.0056489" / "pone.0056489.g002.jpg"
    page.goto("/")  # type: ignore[attr-defined]
    page.set_input_files("#image-file", str(image))  # type: ignore[attr-defined]
    page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
    page.wait_for_selector("#results[aria-busy]", state="detached")  # type: ignore[attr-defined]
    assert page.is_visible("#query-image-preview") and page.is_disabled("#year_from")  # type: ignore[attr-defined]
    first = page.locator("#results .card").first  # type: ignore[attr-defined]
    # the figure itself is in the index: image -> image ranks it first with a cosine close to 1
    assert "Figure 2" in first.inner_text() and "PLoS ONE" in first.inner_text()
    score = float(re.search(r"score (-?\d\.\d{3})", first.inner_text()).group(1))  # type: ignore[union-attr]
    assert score > 0.95
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")  # type: ignore[attr-defined]
    wait_images(page, "#results .card img")  # thumbnails load lazily: scrolled into view, every one loads
    shot(page, "search-image")

    # image -> text: ranked captions, shown caption-first
    page.get_by_label("matching captions (image → text)").check()  # type: ignore[attr-defined]
    page.wait_for_selector("#results.caption-results .caption-card")  # type: ignore[attr-defined]
    page.wait_for_selector("#results[aria-busy]", state="detached")  # type: ignore[attr-defined]
    assert "captions matching the image" in page.inner_text("#status")  # type: ignore[attr-defined]
    assert len(card_ids(page)) > 0
    shot(page, "search-image-captions")

    # a dropped image and a pasted image search too
    data = image.read_bytes()
    for event in ("drop", "paste"):
        page.click("#clear-image")  # type: ignore[attr-defined]
        assert card_ids(page) == []
        page.evaluate(  # type: ignore[attr-defined]
            """([bytes, kind]) => {
                 const file = new File([new Uint8Array(bytes)], 'query.jpg', {type: 'image/jpeg'});
                 const dt = new DataTransfer(); dt.items.add(file);
                 if (kind === 'drop') document.getElementById('drop-zone').dispatchEvent(
                     new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
                 else document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true}));
               }""",
            [list(data), event],
        )
        page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
        assert page.inner_text("#query-image-name") in ("query.jpg", "pasted image")  # type: ignore[attr-defined]
    assert console_errors == []


def test_facet_sidebar_filters_by_type_keeps_the_facets_in_the_url_and_the_figure_page_shows_the_type(
    page: object, site: Site, console_errors: list[str]
) -> None:
    page.goto("/?q=figure&k=48")  # type: ignore[attr-defined]
    page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
    wait_js(page, "() => !document.getElementById('facets').hidden")
    shown = page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#facets li[data-type]:not([hidden])",
        "lis => lis.map(li => [li.dataset.type, parseInt(li.querySelector('.count').textContent.slice(1), 10)])",
    )
    assert shown and sum(n for _, n in shown) == len(card_ids(page)) == 15  # the counts cover the 15 candidates
    kind, count = max(shown, key=lambda pair: pair[1])
    page.check(f"#facets input[value={kind}]")  # type: ignore[attr-defined]
    page.wait_for_url(re.compile(rf"type={kind}"))  # type: ignore[attr-defined]
    wait_js(page, "n => document.querySelectorAll('#results .card').length === n", count)
    page.wait_for_selector("#results[aria-busy]", state="detached")  # type: ignore[attr-defined]
    filtered = card_ids(page)
    badges = page.eval_on_selector_all("#results .card-type", "ps => ps.map(p => p.dataset.type)")  # type: ignore[attr-defined]
    assert badges == [kind] * count
    # the sidebar still offers the other types (a facet ignores its own filter) and the ticked box stays ticked
    assert page.is_checked(f"#facets input[value={kind}]")  # type: ignore[attr-defined]
    assert len(page.eval_on_selector_all("#facets li[data-type]:not([hidden])", "l => l")) == len(shown)  # type: ignore[attr-defined]
    wait_images(page, "#results .card img")
    shot(page, "search-facets")

    # the URL is the search: opened afresh it shows the same filtered results with the box ticked
    shared = page.url  # type: ignore[attr-defined]
    fresh = page.context.new_page()  # type: ignore[attr-defined]
    fresh.goto(shared)
    fresh.wait_for_selector("#results .card")
    fresh.wait_for_selector("#results[aria-busy]", state="detached")
    assert card_ids(fresh) == filtered and fresh.is_checked(f"#facets input[value={kind}]")
    # single-panel only: multipanel=false joins the URL, and every result is single-panel
    fresh.check("#single-panel")
    fresh.wait_for_url(re.compile(r"multipanel=false"))
    fresh.wait_for_selector("#results[aria-busy]", state="detached")
    types = fresh.eval_on_selector_all("#results .card-type", "ps => ps.map(p => p.textContent)")
    assert "multi-panel" not in " ".join(types)
    fresh.close()

    # the figure page shows the type the API gives, with its confidence and the panel flag
    page.locator("#results .card-link").first.click()  # type: ignore[attr-defined]
    page.wait_for_selector("#figure:not([aria-busy])")  # type: ignore[attr-defined]
    figure_id = page.get_attribute("#figure", "data-figure-id")  # type: ignore[attr-defined]
    api = httpx.get(f"{site.url}/api/figures/{figure_id}", timeout=60).json()
    assert api["figure_type"]["value"] == kind and page.get_attribute("#figure-type", "data-type") == kind  # type: ignore[attr-defined]
    assert page.inner_text("#figure-type").startswith(api["figure_type"]["label"])  # type: ignore[attr-defined]
    assert "% confident" in page.inner_text("#figure-type")  # type: ignore[attr-defined]
    assert page.inner_text("#figure-panels").startswith("multi-panel" if api["multipanel"] else "single panel")  # type: ignore[attr-defined]
    assert console_errors == []


# --- figure page --------------------------------------------------------------------------------------


def test_figure_page_zooms_loads_similar_figures_and_searches_with_its_image(
    page: object, console_errors: list[str]
) -> None:
    page.goto("/?q=microscopy")  # type: ignore[attr-defined]
    page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
    target = card_ids(page)[0]
    page.locator("#results .card-link").first.focus()  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.wait_for_url(f"**/figures/{target}")  # type: ignore[attr-defined]
    page.wait_for_selector("#figure:not([aria-busy])")  # type: ignore[attr-defined]
    wait_images(page, "#figure-image")
    assert page.inner_text("#caption").strip()  # type: ignore[attr-defined]
    meta = page.inner_text("#article-meta")  # type: ignore[attr-defined]
    assert "Journal" in meta and "Year" in meta
    link = page.locator("#article-meta a.external")  # type: ignore[attr-defined]
    assert re.match(r"https://(pmc\.ncbi\.nlm\.nih\.gov/articles/PMC\d+/|doi\.org/)", link.get_attribute("href"))

    page.wait_for_selector("#similar .card")  # type: ignore[attr-defined]
    similar = [int(x) for x in page.eval_on_selector_all("#similar .card", "cs => cs.map(c => c.dataset.figureId)")]  # type: ignore[attr-defined]
    assert similar and target not in similar and len(similar) == 12
    wait_images(page, "#similar .card img")
    fitted = page.eval_on_selector("#figure-image", "i => i.clientWidth")  # type: ignore[attr-defined]
    shot(page, "figure")
    page.click("#zoom-in")  # type: ignore[attr-defined]
    page.click("#zoom-in")  # type: ignore[attr-defined]
    assert page.inner_text("#zoom-level") == "150%"  # type: ignore[attr-defined]
    zoomed = page.eval_on_selector("#figure-image", "i => i.clientWidth")  # type: ignore[attr-defined]
    assert zoomed > fitted * 1.4
    page.focus("#zoom-frame")  # type: ignore[attr-defined]
    page.keyboard.press("0")  # type: ignore[attr-defined]
    assert page.inner_text("#zoom-level") == "Fit"  # type: ignore[attr-defined]

    page.click("#search-with-image")  # type: ignore[attr-defined]
    page.wait_for_url(re.compile(rf"/\?figure={target}&mode=image$"))  # type: ignore[attr-defined]
    page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
    assert page.is_visible("#query-image-preview")  # type: ignore[attr-defined]
    assert card_ids(page)[0] == target  # the figure's own image is its nearest neighbour
    assert console_errors == []


# --- add articles -------------------------------------------------------------------------------------


def test_add_page_uploads_a_package_and_its_figures_become_searchable(
    page: object, shared_data: Path, console_errors: list[str]
) -> None:
    package = shared_data / "jats" / "packages" / f"{NEW_PACKAGE}.tar.gz"
    page.goto("/add")  # type: ignore[attr-defined]
    # a wrong key is refused with a clear message
    page.get_by_role("textbox", name="API key").fill("not-the-key")  # type: ignore[attr-defined]
    page.set_input_files("#package", str(package))  # type: ignore[attr-defined]
    page.click("#add-submit")  # type: ignore[attr-defined]
    page.wait_for_selector("#error:not([hidden])")  # type: ignore[attr-defined]
    assert "API key was not accepted" in page.inner_text("#error")  # type: ignore[attr-defined]
    console_errors.clear()  # the browser logs the refused request

    page.get_by_role("textbox", name="API key").fill(API_KEY)  # type: ignore[attr-defined]
    page.click("#add-submit")  # type: ignore[attr-defined]
    page.wait_for_url(re.compile(r"/add\?job=\d+$"))  # type: ignore[attr-defined]
    seen = set()
    for _ in range(600):  # live progress: the status line follows the job's stages
        seen.add(page.inner_text("#job-status"))  # type: ignore[attr-defined]
        if page.is_visible("#job-done"):  # type: ignore[attr-defined]
            break
        page.wait_for_timeout(200)  # type: ignore[attr-defined]
    assert page.is_visible("#job-done"), seen  # type: ignore[attr-defined]
    assert page.eval_on_selector("#job-progress", "p => p.value") == 1  # type: ignore[attr-defined]
    assert page.locator("#job-errors li").count() == 0  # type: ignore[attr-defined]
    assert "Indexed 1 article with 1 figure" in page.inner_text("#job-summary")  # type: ignore[attr-defined]
    wait_js(page, "() => document.querySelector('#job-links a').textContent.includes('(1 figures)')")
    page.wait_for_selector("#recent tbody tr")  # type: ignore[attr-defined]
    shot(page, "add-done")

    page.click("#job-links a")  # type: ignore[attr-defined]
    page.wait_for_selector("#figures .card")  # type: ignore[attr-defined]
    new_ids = [int(x) for x in page.eval_on_selector_all("#figures .card", "cs => cs.map(c => c.dataset.figureId)")]  # type: ignore[attr-defined]
    assert len(new_ids) == 1
    # searchable: the new figure is now among the ranked text results (16 figures, one page of 48)
    page.goto("/?q=figure&k=48")  # type: ignore[attr-defined]
    page.wait_for_selector("#results .card")  # type: ignore[attr-defined]
    ids = card_ids(page)
    assert len(ids) == 16 and new_ids[0] in ids
    assert console_errors == []


# --- responsive layout and the empty state ------------------------------------------------------------


def test_grid_is_one_column_on_a_phone(browser: object, site: Site, console_errors: list[str]) -> None:
    context = browser.new_context(base_url=site.url, viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    pg = context.new_page()
    pg.goto("/?q=heart")
    pg.wait_for_selector("#results .card")
    columns = pg.eval_on_selector("#results", "g => getComputedStyle(g).gridTemplateColumns.split(' ').length")
    overflow = pg.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    pg.screenshot(path=str(ARTIFACTS / "web-search-phone.png"), full_page=False)
    context.close()
    assert columns == 1 and overflow <= 0


def test_empty_state_says_how_to_add_articles(browser: object, tmp_path: Path, tiny_model_dir: Path) -> None:
    with serve(web_settings(tmp_path / "empty", tiny_model_dir, run_worker=False)) as url:
        context = browser.new_context(base_url=url)  # type: ignore[attr-defined]
        pg = context.new_page()
        pg.goto("/")
        assert pg.is_visible("#empty-state")
        text = pg.inner_text("#empty-state")
        assert "Nothing is indexed yet" in text and "biomedsearch ingest" in text
        assert pg.get_attribute("#empty-state a", "href") == "/add"
        pg.get_by_label("Describe the figure you are looking for").fill("chest CT")
        pg.keyboard.press("Enter")
        wait_js(pg, "() => document.querySelector('#status').textContent !== 'Searching…'")
        assert pg.is_visible("#empty-state") and pg.locator("#results .card").count() == 0
        pg.screenshot(path=str(ARTIFACTS / "web-empty.png"), full_page=True)
        context.close()
