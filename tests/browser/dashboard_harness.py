"""What the browser tests share besides fixtures: the servers they start and what they record.

Nothing here imports Playwright, so the default test env (which has none) can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from chatterbox_status.api import dashboard
from chatterbox_status.app import create_app
from chatterbox_status.config import Settings
from chatterbox_status.core import Core
from chatterbox_status.state import CORE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--headless",
]
ENSURE_SCRIPT = "tests/browser/ensure_chromium.sh"


def with_dashboard(app: web.Application) -> web.Application:
    """The app with the dashboard's routes (a no-op once create_app registers them)."""
    if not any(route.method == "GET" and route.resource.canonical == "/" for route in app.router.routes()):
        app.router.add_routes(dashboard.routes)
    return app


def dashboard_app(**overrides: Any) -> web.Application:
    """The whole server on the embedded voice, with the dashboard."""
    return with_dashboard(create_app(Settings(**{"enable_memory_monitoring": True, **overrides})))


@dataclass
class Served:
    """An app listening on 127.0.0.1; ``url`` ends with a slash."""

    app: web.Application
    url: str

    @property
    def core(self) -> Core:
        return self.app[CORE]

# A MutationObserver that writes down every state a request card and the form's status
# line show, so a test can check what the page displayed along the way, however briefly.
RECORD_CARDS = """
window.__cards = [];
window.__formStatus = [];
const seen = new Set();
const text = (card, selector) => card.querySelector(selector)?.textContent ?? "";
new MutationObserver(() => {
  const line = document.getElementById("form-status")?.textContent;
  if (line && window.__formStatus.at(-1) !== line) window.__formStatus.push(line);
  for (const card of document.querySelectorAll("#requests .request")) {
    const entry = {
      id: card.dataset.requestId,
      status: card.dataset.status,
      step: text(card, ".step"),
      chunk: text(card, ".chunk"),
      percent: text(card, ".percent"),
      eta: text(card, ".eta"),
      position: text(card, ".queue-position"),
    };
    const key = JSON.stringify(entry);
    if (!seen.has(key)) {
      seen.add(key);
      window.__cards.push(entry);
    }
  }
}).observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
"""


@dataclass
class PageLog:
    """Every request the page made, and whatever went wrong in it."""

    requests: list[Any] = field(default_factory=list)  # playwright Request objects
    errors: list[str] = field(default_factory=list)

    def http(self) -> list[Any]:
        return [r for r in self.requests if r.url.startswith(("http://", "https://"))]

    def count(self, path: str, method: str = "GET") -> int:
        """Requests whose path (after the served prefix) is ``path``; query strings ignored."""
        return sum(1 for r in self.http() if r.method == method and urlsplit(r.url).path.endswith("/" + path))

    def paths(self) -> list[str]:
        return [f"{r.method} {urlsplit(r.url).path}" for r in self.http()]
