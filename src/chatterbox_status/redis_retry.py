"""The one retry loop of the cluster's Redis loops (event log, chunk queue, engine workers,
ordered senders): a module of its own, so redis_events and redis_queue both import it
without importing each other in a circle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)


async def keep(
    run: Callable[[], Awaitable[Any]],
    on_error: Callable[[BaseException], None],
    reached: Callable[[], bool] = lambda: False,
) -> None:
    """Run a loop until it ends, through Redis going away and coming back (backing off); a
    bug is logged and the loop starts again, rather than leave the process deaf. Cancelled,
    it ends, even where the client turned the cancellation into a connection error.
    ``reached`` says whether the loop had reached Redis since its last failure: a new
    outage then starts from the shortest pause again."""
    failures = 0
    while True:
        try:
            await run()
            return
        except (RedisError, OSError) as exc:
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError() from exc
            if reached():
                failures = 0
            on_error(exc)
        except Exception:
            log.exception("%s failed", getattr(run, "__qualname__", run))
        await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])  # a backoff
        failures += 1
