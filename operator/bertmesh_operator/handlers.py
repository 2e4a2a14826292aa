"""The kopf handlers: when the operator reconciles a ModelDeployment, and how reconciles are kept apart.

- `on.create` / `on.update` / `on.resume` reconcile at once when a ModelDeployment appears, changes (spec,
  labels or annotations, including `bertmesh rollout`'s command), or is found at start-up.
- A daemon per ModelDeployment (`follow_children`) reconciles it when the watches wake it (a Deployment
  reports something new, a pod changes, a child is deleted), so the status follows the pods within seconds,
  and re-checks it (level-based) after `resync` seconds without a wake. A timer, running only while a
  rollout is in flight, reconciles every few seconds: that is what notices a ready canary and runs the
  canary analysis when its interval is due.
- Watches of every labelled child (`serving.bertmesh.io/model-deployment`, selected by the API server) keep
  a `ChildRegistry`, filled by one LIST per kind before kopf starts: the reconcile gets the children as they
  are now without a request (readiness for the rollout, what to prune, what was edited or deleted since it
  was applied: only that is applied again). Not a kopf index: kopf pre-populates indexes with one toggle
  per listed object, each waking every waiting handler, which is quadratic (minutes at 1,000
  ModelDeployments). A watch of the pods with that label keeps a `PodView` each (`readiness`), which the
  reconcile reads to say why a track is not ready.

One reconcile at a time per ModelDeployment (an asyncio lock in its memo); each runs in a thread pool,
because the kubernetes client is synchronous. Errors that heal become `kopf.TemporaryError(delay=...)`; an
invalid spec is a Degraded condition written by the reconcile and, in change handlers, a PermanentError
(an Event, no retries); the follower does not raise for it, so a bad spec is never a retry storm.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from bertmesh_operator.errors import TransientApiError
from bertmesh_operator.observe import ChildRegistry, Owner, OwnerIndex
from bertmesh_operator.permissions import CHILD_RESOURCES, POD_RESOURCE
from bertmesh_operator.readiness import PodView, pod_owner, pod_view
from bertmesh_operator.reconcile import ObjectMemory, Outcome, Reconciler
from bertmesh_operator.render.context import MD_LABEL
from bertmesh_operator.resource import GROUP, PLURAL, VERSION
from bertmesh_operator.states import IN_FLIGHT, phase_of

# While a rollout is in flight the timer reconciles at least this often (seconds): a canary's readiness and
# its analysis interval (10s at least) are noticed within this much.
ROLLOUT_TICK_SECONDS = 5.0
FINALIZER = "serving.bertmesh.io/operator"
ANNOTATION_PREFIX = "serving.bertmesh.io"
CHILD_EVENTS = "children"  # the id of the handler of the children's watch events
POD_EVENTS = "pods"  # the id of the handler of the pods' watch events
LIST_CHUNK = 250  # objects per page of the watches' first LIST
log = logging.getLogger(__name__)


@dataclass
class ObjectSlot:
    """Per-ModelDeployment handler state, kept in its kopf memo."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    memory: ObjectMemory = field(default_factory=ObjectMemory)
    last_reconciled: float = -math.inf  # event-loop time of the last completed reconcile


@dataclass
class Runtime:
    """What the handlers share: the reconciler, its thread pool and the timing."""

    reconciler: Reconciler
    executor: ThreadPoolExecutor
    resync_seconds: float
    children: ChildRegistry = field(default_factory=ChildRegistry)
    pods: OwnerIndex[PodView] = field(default_factory=OwnerIndex)
    # One per ModelDeployment being followed: set when what its children report changes.
    wakeups: dict[Owner, asyncio.Event] = field(default_factory=dict)

    def wake(self, owner: Owner | None) -> None:
        """Have the ModelDeployment's follower reconcile it soon (many wakes before it runs make one)."""
        wakeup = self.wakeups.get(owner) if owner is not None else None
        if wakeup is not None:
            wakeup.set()

    @property
    def rollout_tick_seconds(self) -> float:
        """How often a ModelDeployment with a rollout in flight is reconciled."""
        return min(self.resync_seconds, ROLLOUT_TICK_SECONDS)


def _slot(memo: kopf.Memo) -> ObjectSlot:
    slot = memo.get("bertmesh")
    if not isinstance(slot, ObjectSlot):
        slot = ObjectSlot()
        memo["bertmesh"] = slot
    return slot


async def reconcile(runtime: Runtime, body: kopf.Body, memo: kopf.Memo) -> Outcome:
    """Run one reconcile of the object in the thread pool (after any other reconcile of it); post its events."""
    slot = _slot(memo)
    loop = asyncio.get_running_loop()
    async with slot.lock:
        # Copied in the event loop: kopf keeps updating the live body, and the watches the registry, meanwhile.
        snapshot = copy.deepcopy(dict(body))
        meta = snapshot["metadata"]
        children = runtime.children.children(meta.get("namespace", ""), meta["name"])
        pods = runtime.pods.values((meta.get("namespace", ""), meta["name"]))
        try:
            outcome = await loop.run_in_executor(
                runtime.executor, runtime.reconciler.reconcile, snapshot, children, slot.memory, pods
            )
        except TransientApiError as error:
            raise kopf.TemporaryError(str(error), delay=error.delay) from None
        slot.last_reconciled = loop.time()
    for uid in outcome.vanished:
        runtime.children.discard(uid)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
    if outcome.applied or outcome.pruned or outcome.status_written:
        log.info(
            "%s/%s: phase %s, %d applied, %d pruned, status %s",
            snapshot["metadata"].get("namespace"),
            snapshot["metadata"]["name"],
            outcome.phase,
            outcome.applied,
            outcome.pruned,
            "written" if outcome.status_written else "unchanged",
        )
    return outcome


async def _woken(wakeup: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(wakeup.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def follow_children(runtime: Runtime, body: kopf.Body, memo: kopf.Memo) -> None:
    """Reconcile the ModelDeployment whenever its children report a change, and re-check it every resync.

    What the Deployments and pods report changes the status (ready replicas, why not ready): the watches wake
    this loop, so the status follows them within a reconcile. The re-check on a quiet object is the safety
    net for a lost watch event or a drifted child (level-based), skipped right after another reconcile.
    """
    loop = asyncio.get_running_loop()
    meta = body.get("metadata", {})
    owner = (meta.get("namespace", ""), meta.get("name", ""))
    # A new one even if a namesake's follower still runs (a ModelDeployment deleted and made again): the
    # newest object is the one the watches' wakes are for.
    wakeup = runtime.wakeups[owner] = asyncio.Event()
    delay = runtime.resync_seconds
    try:
        while True:
            woken = await _woken(wakeup, delay)
            wakeup.clear()
            delay = runtime.resync_seconds
            if not woken and loop.time() - _slot(memo).last_reconciled < runtime.resync_seconds / 2:
                continue
            try:
                outcome = await reconcile(runtime, body, memo)
            except kopf.TemporaryError as error:
                delay = error.delay or runtime.resync_seconds
                log.warning("%s/%s: %s (retrying in %gs)", owner[0], owner[1], error, delay)
                continue
            if outcome.gone:
                return
            if outcome.retry is not None:
                delay = outcome.retry_delay
    finally:
        if runtime.wakeups.get(owner) is wakeup:
            del runtime.wakeups[owner]


def _rollout_in_flight(status: kopf.Status, **_: Any) -> bool:
    return phase_of(status.get("phase")) in IN_FLIGHT


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """Every handler of the operator, registered on a registry of its own (nothing happens at import)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The kubeconfig or the in-cluster service account, as the kubernetes client finds them."""
        return kopf.login_via_client(**kwargs)

    async def on_child_event(type: str | None, body: kopf.Body, **_: Any) -> None:  # noqa: A002 - kopf's name
        if type == "DELETED":
            runtime.wake(runtime.children.discard(body.get("metadata", {}).get("uid", "")))
        else:
            runtime.wake(runtime.children.upsert(body))

    async def on_pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:  # noqa: A002 - kopf's name
        uid = body.get("metadata", {}).get("uid", "")
        owner = pod_owner(body)
        if type == "DELETED" or owner is None:
            found = runtime.pods.pop(uid)
            runtime.wake(found[0] if found is not None else None)
            return
        view = pod_view(body)
        if runtime.pods.put(owner, uid, view) != view:
            runtime.wake(owner)

    kopf.on.event("", "v1", POD_RESOURCE, id=POD_EVENTS, labels={MD_LABEL: kopf.PRESENT}, registry=registry)(
        on_pod_event
    )

    for api_version, kind in CHILD_RESOURCES:
        group, _, version = api_version.rpartition("/")
        plural = CHILD_RESOURCES[(api_version, kind)][1]
        kopf.on.event(
            group=group,
            version=version,
            plural=plural,
            id=CHILD_EVENTS,
            labels={MD_LABEL: kopf.PRESENT},
            registry=registry,
        )(on_child_event)

    async def on_change(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        outcome = await reconcile(runtime, body, memo)
        if outcome.invalid is not None:
            raise kopf.PermanentError(outcome.invalid)
        if outcome.retry is not None:
            raise kopf.TemporaryError(outcome.retry, delay=outcome.retry_delay)

    async def follow(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await follow_children(runtime, body, memo)

    async def on_rollout_tick(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        outcome = await reconcile(runtime, body, memo)
        if outcome.retry is not None:
            raise kopf.TemporaryError(outcome.retry, delay=outcome.retry_delay)

    kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-created", registry=registry)(on_change)
    kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile-updated", registry=registry)(on_change)
    kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-resumed", registry=registry)(on_change)
    # Cancelled (kopf's cancellation_timeout) when the object goes or the operator stops: safe anywhere.
    kopf.daemon(GROUP, VERSION, PLURAL, id="follow", cancellation_timeout=1.0, registry=registry)(follow)
    # Only while a rollout is in flight (kopf starts and stops this timer as the phase changes).
    kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id="rollout",
        interval=runtime.rollout_tick_seconds,
        initial_delay=runtime.rollout_tick_seconds,
        when=_rollout_in_flight,
        registry=registry,
    )(on_rollout_tick)
    return registry


def operator_settings(*, workers: int) -> kopf.OperatorSettings:
    """kopf's settings for bertmesh: its own finalizer and annotations, label-selected child watches."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Watch only the operator's children and their pods (the API server filters), not every Service in the
    # cluster.
    for api_version, kind in CHILD_RESOURCES:
        group, _, version = api_version.rpartition("/")
        settings.watching.label_selectors[group, version, CHILD_RESOURCES[(api_version, kind)][1]] = MD_LABEL
    settings.watching.label_selectors["", "v1", POD_RESOURCE] = MD_LABEL
    # Only the resources present at start-up: no list/watch of CRDs or namespaces (not in permissions.RULES).
    settings.scanning.disabled = True
    settings.posting.reporting_component = "bertmesh-operator"
    # No Event per handler that succeeded (two API writes per ModelDeployment per start); kopf's warnings and
    # errors, and the operator's own Events (kopf.event), are still posted.
    settings.posting.level = logging.WARNING
    # The first LIST of every watched kind in pages, not 1,000 Deployments decoded at once.
    settings.watching.chunk_size = LIST_CHUNK
    settings.execution.max_workers = workers
    # Unexpected errors (bugs) are retried, but not in a hot loop.
    settings.execution.default_backoff = 30
    return settings
