"""Has kopf read an API group's resources again when the operator's own discovery finds a kind it creates served.

kopf (cluster-wide) watches the CRDs and, on each CRD event, asks the API server which resources the CRD's group
serves. An API server may report a new CRD Established before its discovery lists the resource; when every event
of the CRD comes before that, kopf never learns of the kind and never watches it (seen in CI: KEDA's ScaledObject
installed after the operator started stayed unwatched, so a deleted ScaledObject came back only at the resync).
The reconciler asks discovery itself before it applies an optional kind (once a minute at most); when that
answer is "served" for the first time, or again after "not served", this asks kopf to scan the
group as a CRD event would. A scan of a group kopf already watches changes nothing.

kopf offers no public call for it: this uses kopf's own observation step, `process_discovered_resource_event`, and
an `Insights` passed to `kopf.run`; both exist in the pinned kopf (requirements/lock.txt), and
tests/e2e/test_operator.py covers the path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
from typing import Any

import kopf
from kopf._cogs.structs.references import Insights
from kopf._core.reactor.observation import process_discovered_resource_event

log = logging.getLogger(__name__)

RESCAN_WAIT_SECONDS = 10.0  # how long a reconcile waits for kopf's scan before it applies anyway


class KindRescan:
    """Called from reconcile threads with an API version: kopf scans that version's group, on kopf's loop and in
    kopf's context (its API calls read their credentials from a context variable)."""

    def __init__(self, settings: kopf.OperatorSettings, registry: kopf.OperatorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.insights = Insights()  # passed to kopf.run: the state the scan revises
        self._started: tuple[asyncio.AbstractEventLoop, contextvars.Context, int] | None = None

        @kopf.on.startup(registry=registry)
        async def remember_kopfs_loop(**_: Any) -> None:
            self._started = (asyncio.get_running_loop(), contextvars.copy_context(), threading.get_ident())

    def __call__(self, api_version: str) -> None:
        """Scans the group of `api_version` and waits (up to RESCAN_WAIT_SECONDS) until the watches are revised,
        so that the kind is watched before the reconcile applies it. Before kopf has started, nothing: its first
        scan is still to come."""
        if self._started is None:
            return
        loop, context, loop_thread = self._started
        group = api_version.rpartition("/")[0]
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def start() -> None:
            task = loop.create_task(self._scan(group), context=context.copy())
            task.add_done_callback(lambda finished: _settle(finished, done))

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError:  # kopf's loop has closed: the operator is stopping
            return
        if threading.get_ident() == loop_thread:
            return  # on kopf's own loop: never block it waiting for itself
        try:
            done.result(timeout=RESCAN_WAIT_SECONDS)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError) as error:
            log.warning("kopf did not rescan %s within %gs: %r", group, RESCAN_WAIT_SECONDS, error)
        except Exception:  # a failed scan leaves the watches as they were; the reconcile goes on
            log.warning("kopf did not rescan %s", group, exc_info=True)

    async def _scan(self, group: str) -> None:
        # What kopf does for a CRD event of this group: the event's body only names the group.
        event = {"type": "MODIFIED", "object": {"spec": {"group": group}}}
        await process_discovered_resource_event(
            raw_event=event,  # type: ignore[arg-type]
            settings=self.settings,
            registry=self.registry,
            insights=self.insights,
        )
        log.info("kopf rescanned the resources of %s", group)


def _settle(task: asyncio.Task[None], done: concurrent.futures.Future[None]) -> None:
    if task.cancelled():
        done.cancel()
    elif task.exception() is not None:
        done.set_exception(task.exception())
    else:
        done.set_result(None)
