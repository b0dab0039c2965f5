"""The dashboard's files as the server sends them (no browser: tests/browser/ has those).

GET / is the page, GET /web/{name} its scripts and styles, straight from the package,
with the right content types, revalidated through ETags, and with nothing fetched from
anywhere else: every URL the page uses is relative, so it works under a path prefix.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from doubles import ScriptedEngine, hosted

from chatterbox_status.api import dashboard
from chatterbox_status.app import create_app
from chatterbox_status.config import Settings

WEB_DIR = Path(dashboard.__file__).resolve().parent.parent / "web"
EXPECTED_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def with_dashboard(app: web.Application) -> web.Application:
    """The app with the dashboard's routes (a no-op once create_app registers them)."""
    if not any(route.method == "GET" and route.resource.canonical == "/" for route in app.router.routes()):
        app.router.add_routes(dashboard.routes)
    return app


@pytest.fixture
async def client(aiohttp_client):
    """The whole app (errors, CORS) on a scripted engine: these tests need no voice."""
    return await aiohttp_client(with_dashboard(create_app(Settings(), hosted(ScriptedEngine()))))


class Links(HTMLParser):
    """Every URL-bearing attribute of a page, and its <meta> tags."""

    URL_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "data"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.meta: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "meta":
            self.meta.append(attributes)
        if tag == "script":
            self.scripts.append(attributes)
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES and value is not None:
                self.urls.append((tag, name, value))


def parse(html: str) -> Links:
    links = Links()
    links.feed(html)
    return links


def is_relative(url: str) -> bool:
    """A path relative to the page's directory: no scheme, no host, no leading slash."""
    return not re.match(r"^([a-z][a-z0-9+.-]*:|//|/)", url, re.IGNORECASE)


async def test_get_root_is_the_dashboard_page(client):
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.charset == "utf-8"
    html = await response.text()
    links = parse(html)
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in links.meta
    assert links.scripts == [{"type": "module", "src": "web/app.js"}]
    for needed in ('id="synth-form"', 'id="player"', 'id="download"', 'id="requests"', 'id="history"',
                   'id="statistics"', 'id="memory"', 'name="exaggeration"', 'name="cfg_weight"',
                   'name="temperature"', 'name="seed"', 'name="speed"', 'name="voice"', 'name="response_format"'):
        assert needed in html, needed


async def test_the_page_uses_no_external_or_absolute_urls(client):
    html = await (await client.get("/")).text()
    urls = parse(html).urls
    assert urls, "the page links its script, styles and icon"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    for tag, name, url in urls:
        assert is_relative(url), f"<{tag} {name}={url!r}> is not relative to the page"


async def test_every_file_the_page_links_is_served(client):
    html = await (await client.get("/")).text()
    for _, _, url in parse(html).urls:
        response = await client.get("/" + url)
        assert response.status == 200, url


def without_comments(code: str) -> str:
    return re.sub(r"(?m)^\s*//.*$", "", re.sub(r"/\*.*?\*/", "", code, flags=re.DOTALL))


async def test_scripts_and_styles_load_nothing_from_elsewhere():
    for path in sorted(WEB_DIR.glob("*.js")) + sorted(WEB_DIR.glob("*.css")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{path.name} names an absolute URL"
        text = without_comments(text)
        for specifier in re.findall(r"""^\s*import\b[^'"]*['"]([^'"]+)['"]""", text, re.MULTILINE):
            assert specifier.startswith("./"), f"{path.name} imports {specifier!r}"
        # No root-relative paths in string literals: they would escape a path prefix.
        assert not re.search(r"""["'`]/[A-Za-z]""", text), f"{path.name} uses a root-relative path"
        for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", text):
            assert is_relative(url) or url.startswith("data:"), f"{path.name}: url({url})"


@pytest.mark.parametrize("name", sorted(p.name for p in WEB_DIR.iterdir() if p.is_file()))
async def test_static_files_have_their_content_types(client, name):
    response = await client.get(f"/web/{name}")
    assert response.status == 200
    assert response.content_type == EXPECTED_TYPES[Path(name).suffix]
    assert await response.read() == (WEB_DIR / name).read_bytes()
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_files_are_revalidated_with_etags(client):
    for path in ("/", "/web/app.js", "/web/style.css"):
        response = await client.get(path)
        assert response.headers["Cache-Control"] == "no-cache"
        etag = response.headers["ETag"]
        again = await client.get(path, headers={"If-None-Match": etag})
        assert again.status == 304
        assert await again.read() == b""
        assert again.headers["ETag"] == etag
        changed = await client.get(path, headers={"If-None-Match": '"something-else"'})
        assert changed.status == 200


async def test_files_answer_range_requests(client):
    """A byte range of a file is a 206 with just those bytes (aiohttp's file handling)."""
    whole = (WEB_DIR / "app.js").read_bytes()
    response = await client.get("/web/app.js", headers={"Range": "bytes=0-9"})
    assert response.status == 206
    assert await response.read() == whole[:10]
    assert response.headers["Content-Range"] == f"bytes 0-9/{len(whole)}"


async def test_the_page_carries_a_content_security_policy(client):
    policy = (await client.get("/")).headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert "blob:" in directives["media-src"]


@pytest.mark.parametrize(
    "path",
    [
        "/web/missing.js",
        "/web/dashboard.py",
        "/web/.hidden.js",
        "/web/..%2Fapi%2Fdashboard.py",
        "/web/%2E%2E%2Fapp.py",
        "/web/",
        "/web/index.html/x",
    ],
)
async def test_nothing_else_is_served_from_the_package(client, path):
    response = await client.get(path)
    assert response.status == 404
    body = await response.json()
    assert "error" in body


async def test_head_answers_like_get(client):
    response = await client.head("/web/app.js")
    assert response.status == 200
    assert response.content_type == "text/javascript"


async def test_create_app_serves_the_dashboard(aiohttp_client):
    """The dashboard is part of the server: create_app registers dashboard.routes."""
    client = await aiohttp_client(create_app(Settings(), hosted(ScriptedEngine())))
    response = await client.get("/")
    assert response.status == 200, "create_app does not register api/dashboard.py's routes"
    assert response.content_type == "text/html"
    assert (await client.get("/web/app.js")).content_type == "text/javascript"


def test_setup_py_ships_the_files():
    """setup.py's package_data takes web/* (no subfolders), so every file must sit at the top."""
    assert all(path.is_file() for path in WEB_DIR.iterdir() if path.name != "__pycache__")
    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text(encoding="utf-8")
    assert '"web/*"' in setup
