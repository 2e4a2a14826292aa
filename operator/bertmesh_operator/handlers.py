"""The kopf handlers: when the operator reconciles a ModelDeployment, and how reconciles are kept apart.

- One watch-event handler for ModelDeployments (`on.event`, kopf's lowest level) keeps the newest body of
  each and starts a follower (`follow`) for every one it sees, at start-up too. The follower is the only
  thing that reconciles its ModelDeployment: at once when it starts, whenever the object changes (spec,
  labels or annotations, including `bertmesh rollout`'s command; not for the operator's own status writes),
  whenever the children's watches wake it (a Deployment reports something new, a pod changes, a child is
  deleted), every few seconds while a rollout is in flight (a ready canary, a due canary analysis), and
  after `resync` seconds without a wake (level-based safety net). It ends when its object is deleted.
- No kopf change handlers, daemons or timers: those make kopf put a finalizer and a last-handled
  annotation on every object, two more writes per ModelDeployment (a sixth of the API server's work at
  1,000 of them) and a finalizer that blocks deletion while no operator runs. kopf still removes the
  finalizer that earlier versions put (`FINALIZER`) at the first event of each object.
- Watches of every labelled child (`serving.bertmesh.io/model-deployment`, selected by the API server) keep
  a `ChildRegistry`, filled by one LIST per kind before kopf starts: the reconcile gets the children as they
  are now without a request (readiness for the rollout, what to prune, what was edited or deleted since it
  was applied: only that is applied again). Not a kopf index: kopf pre-populates indexes with one toggle
  per listed object, each waking every waiting handler, which is quadratic (minutes at 1,000
  ModelDeployments). A watch of the pods with that label keeps a `PodView` each (`readiness`), which the
  reconcile reads to say why a track is not ready.

One reconcile at a time per ModelDeployment (its follower's); each runs in a thread pool, because the
kubernetes client is synchronous. Errors that heal are retried after their delay; an invalid spec is a
Degraded condition and a Warning Event written by the reconcile, retried only when the object changes or at
the resync, so a bad spec is never a retry storm.
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
from bertmesh_operator.states import IN_FLIGHT

# While a rollout is in flight the follower reconciles at least this often (seconds): a canary's readiness
# and its analysis interval (10s at least) are noticed within this much.
ROLLOUT_TICK_SECONDS = 5.0
# Unexpected errors (bugs) are retried, but not in a hot loop.
ERROR_BACKOFF_SECONDS = 30.0
# Put by operators before 2026-12: kopf removes it from each object at its first event (no handler needs it).
FINALIZER = "serving.bertmesh.io/operator"
CHILD_EVENTS = "children"  # the id of the handler of the children's watch events
POD_EVENTS = "pods"  # the id of the handler of the pods' watch events
MD_EVENTS = "modeldeployments"  # the id of the handler of the ModelDeployments' watch events
LIST_CHUNK = 250  # objects per page of the watches' first LIST
WORKER_IDLE_SECONDS = 0.5  # kopf's per-object worker ends after this long without an event
log = logging.getLogger(__name__)


@dataclass
class Followed:
    """One ModelDeployment being followed: its newest body (from the watch) and its follower's state."""

    body: kopf.Body
    uid: str
    memory: ObjectMemory = field(default_factory=ObjectMemory)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    last_reconciled: float = -math.inf  # event-loop time of the last completed reconcile
    task: asyncio.Task[None] | None = None


@dataclass
class Runtime:
    """What the handlers share: the reconciler, its thread pool and the timing."""

    reconciler: Reconciler
    executor: ThreadPoolExecutor
    resync_seconds: float
    children: ChildRegistry = field(default_factory=ChildRegistry)
    pods: OwnerIndex[PodView] = field(default_factory=OwnerIndex)
    # Every ModelDeployment the watch has shown and not yet deleted.
    followed: dict[Owner, Followed] = field(default_factory=dict)
    # Reconciles running at once (the thread pool's size): the others wait before taking their snapshot, so
    # a restart's thousand reconciles do not hold a thousand copies of their bodies in the pool's queue.
    concurrency: int = 8
    _running: asyncio.Semaphore | None = None

    @property
    def running(self) -> asyncio.Semaphore:
        """The reconciles' turnstile (made on first use, in the event loop)."""
        if self._running is None:
            self._running = asyncio.Semaphore(self.concurrency)
        return self._running

    def wake(self, owner: Owner | None) -> None:
        """Have the ModelDeployment's follower reconcile it soon (many wakes before it runs make one)."""
        entry = self.followed.get(owner) if owner is not None else None
        if entry is not None:
            entry.wakeup.set()

    def observe(self, event_type: str | None, body: kopf.Body) -> None:
        """A ModelDeployment watch event: keep the newest body, start or wake its follower, or end it."""
        meta = body.get("metadata") or {}
        owner: Owner = (meta.get("namespace", ""), meta.get("name", ""))
        uid = meta.get("uid", "")
        entry = self.followed.get(owner)
        if entry is not None and entry.uid != uid:  # a namesake deleted and made again: follow the new one
            self.stop(owner)
            entry = None
        if event_type == "DELETED":
            if entry is not None:
                self.stop(owner)
            return
        if entry is None:
            entry = self.followed[owner] = Followed(body=body, uid=uid)
            entry.task = asyncio.get_running_loop().create_task(follow(self, entry), name=f"follow {owner}")
            return
        entry.body = body
        # The event of the operator's own status write changes nothing the reconcile reads.
        if meta.get("resourceVersion") != entry.memory.known_resource_version:
            entry.wakeup.set()

    def stop(self, owner: Owner) -> None:
        """Stop following a ModelDeployment (deleted, or the operator stopping)."""
        entry = self.followed.pop(owner, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()

    @property
    def rollout_tick_seconds(self) -> float:
        """How often a ModelDeployment with a rollout in flight is reconciled."""
        return min(self.resync_seconds, ROLLOUT_TICK_SECONDS)


async def reconcile(runtime: Runtime, entry: Followed) -> Outcome:
    """Run one reconcile of the object in the thread pool; post its events."""
    loop = asyncio.get_running_loop()
    async with runtime.running:
        body = entry.body
        # Copied in the event loop: the watch replaces the body, and updates the registries, meanwhile.
        snapshot = copy.deepcopy(dict(body))
        meta = snapshot["metadata"]
        children = runtime.children.children(meta.get("namespace", ""), meta["name"])
        pods = runtime.pods.values((meta.get("namespace", ""), meta["name"]))
        outcome = await loop.run_in_executor(
            runtime.executor, runtime.reconciler.reconcile, snapshot, children, entry.memory, pods
        )
    entry.last_reconciled = loop.time()
    for uid in outcome.vanished:
        runtime.children.discard(uid)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])
    if outcome.applied or outcome.pruned or outcome.status_written:
        log.info(
            "%s/%s: phase %s, %d applied, %d pruned, status %s",
            meta.get("namespace"),
            meta["name"],
            outcome.phase,
            outcome.applied,
            outcome.pruned,
            "written" if outcome.status_written else "unchanged",
        )
    return outcome


async def _woken(wakeup: asyncio.Event, seconds: float) -> bool:
    if seconds <= 0:
        return True
    try:
        await asyncio.wait_for(wakeup.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def follow(runtime: Runtime, entry: Followed) -> None:
    """Reconcile one ModelDeployment now and whenever it or its children change, until it is deleted.

    What the Deployments and pods report changes the status (ready replicas, why not ready): the watches wake
    this loop, so the status follows them within a reconcile. The re-check on a quiet object is the safety
    net for a lost watch event or a drifted child (level-based), skipped right after another reconcile.
    """
    loop = asyncio.get_running_loop()
    meta = entry.body.get("metadata") or {}
    name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    delay, first = 0.0, True
    while True:
        # A retry or a rollout tick is due whatever else ran; only the plain resync is skipped when recent.
        due = delay < runtime.resync_seconds
        woken = await _woken(entry.wakeup, delay)
        entry.wakeup.clear()
        delay = runtime.resync_seconds
        if not woken and not due and loop.time() - entry.last_reconciled < runtime.resync_seconds / 2:
            continue
        try:
            outcome = await reconcile(runtime, entry)
        except TransientApiError as error:
            delay = error.delay or runtime.resync_seconds
            log.warning("%s: %s (retrying in %gs)", name, error, delay)
            continue
        except Exception:  # a bug: say so, keep following, do not spin
            log.exception("%s: reconcile failed (retrying in %gs)", name, ERROR_BACKOFF_SECONDS)
            delay = ERROR_BACKOFF_SECONDS
            continue
        if first:
            # Counted by bench/operator_scale.py: every object reconciled once after a (re)start.
            log.info("%s: followed (phase %s)", name, outcome.phase)
            first = False
        if outcome.gone:
            if runtime.followed.get((meta.get("namespace", ""), meta.get("name", ""))) is entry:
                del runtime.followed[(meta.get("namespace", ""), meta.get("name", ""))]
            return
        if outcome.invalid is not None:
            log.warning("%s: invalid spec: %s", name, outcome.invalid)
        if outcome.retry is not None:
            delay = min(delay, outcome.retry_delay)
            log.warning("%s: %s (retrying in %gs)", name, outcome.retry, delay)
        if outcome.phase in IN_FLIGHT:
            delay = min(delay, runtime.rollout_tick_seconds)
        if outcome.recheck is not None:
            delay = min(delay, outcome.recheck)


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

    async def on_model_deployment_event(type: str | None, body: kopf.Body, **_: Any) -> None:  # noqa: A002
        runtime.observe(type, body)

    kopf.on.event(GROUP, VERSION, PLURAL, id=MD_EVENTS, registry=registry)(on_model_deployment_event)

    @kopf.on.cleanup(registry=registry)
    async def stop_following(**_: Any) -> None:
        for owner in list(runtime.followed):
            runtime.stop(owner)

    return registry


def operator_settings(*, workers: int, clusterwide: bool) -> kopf.OperatorSettings:
    """kopf's settings for bertmesh: label-selected child watches, paged LISTs, Warnings only as Events; CRDs
    watched for kinds installed later only when `clusterwide` (permissions.CLUSTER_RULES)."""
    settings = kopf.OperatorSettings()
    # No handler needs a finalizer now; naming the one earlier versions put lets kopf remove it.
    settings.persistence.finalizer = FINALIZER
    # Watch only the operator's children and their pods (the API server filters), not every Service in the
    # cluster.
    for api_version, kind in CHILD_RESOURCES:
        group, _, version = api_version.rpartition("/")
        settings.watching.label_selectors[group, version, CHILD_RESOURCES[(api_version, kind)][1]] = MD_LABEL
    settings.watching.label_selectors["", "v1", POD_RESOURCE] = MD_LABEL
    # Cluster-wide, kopf watches the CRDs (permissions.CLUSTER_RULES) and starts watching a child kind whose CRD
    # appears later (KEDA installed after bertmesh). Namespaced, it has no cluster-wide right: only the kinds
    # served at start-up, and no 403 warnings. Namespaces are never listed (the flags name them).
    settings.scanning.disabled = not clusterwide
    settings.posting.reporting_component = "bertmesh-operator"
    # No Event per handler that succeeded (two API writes per ModelDeployment per start); kopf's warnings and
    # errors, and the operator's own Events (kopf.event), are still posted.
    settings.posting.level = logging.WARNING
    # The first LIST of every watched kind in pages, not 1,000 Deployments decoded at once.
    settings.watching.chunk_size = LIST_CHUNK
    # kopf keeps a worker task per object until it has had no event for this long (default 5 s). Every
    # handler here returns at once, so a short wait loses nothing; with kopf's default a restart's listing
    # of 1,000 ModelDeployments and their 9,000 children kept ~10,000 workers alive at once (RSS +50 MiB).
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    settings.execution.max_workers = workers
    # Unexpected errors (bugs) in a watch handler are retried, but not in a hot loop.
    settings.execution.default_backoff = int(ERROR_BACKOFF_SECONDS)
    return settings
