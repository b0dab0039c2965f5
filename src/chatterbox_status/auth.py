"""Optional API key: when API_KEY is set, every endpoint but the open ones needs it.

OpenAI clients send ``Authorization: Bearer KEY``; ``X-API-Key`` works too, and so does
``?api_key=`` for browsers' EventSource, which cannot send headers. The comparison runs
in constant time, on the bytes as they came (a header that is not UTF-8 is a wrong key,
not a crash), and a client address that keeps sending wrong keys is slowed down: after
``MAX_FAILURES`` within ``FAILURE_WINDOW_S`` it gets 429 until the window has moved on.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from aiohttp import web

from .errors import ApiError

# Liveness checks and the dashboard's static files carry no data and stay open.
OPEN_PATHS = frozenset({"/health", "/v1/health", "/ping", "/v1/ping", "/"})
OPEN_PREFIXES = ("/web/",)

MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
# Addresses remembered at once; the one idle longest is forgotten first, so memory is bounded.
MAX_TRACKED_ADDRESSES = 4096

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def supplied_key(request: web.Request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or request.query.get("api_key")


class FailureThrottle:
    """Recent wrong-key times per client address, in a bounded table."""

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S,
                 max_addresses: int = MAX_TRACKED_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self.clock()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures[0] + self.window_s - now if len(failures) >= self.limit else None

    def record(self, address: str) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[address] = failures  # most recent last
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)


def api_key_middleware(api_key: str, throttle: FailureThrottle | None = None) -> Callable:
    expected = api_key.encode()
    throttle = throttle or FailureThrottle()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" or request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        address = request.remote or ""
        wait = throttle.retry_after(address)
        if wait is not None:
            raise ApiError(429, f"Too many wrong API keys from this address; try again in {math.ceil(wait)} s",
                           code="too_many_failed_keys", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        key = supplied_key(request)
        if key is None:
            raise ApiError(401, "An API key is required: send Authorization: Bearer <key>", code="missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        # Bytes that are not UTF-8 reach us as surrogates; encoded as such they never match.
        if not hmac.compare_digest(key.encode("utf-8", "surrogatepass"), expected):
            throttle.record(address)
            raise ApiError(401, "The API key is not valid", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return middleware
