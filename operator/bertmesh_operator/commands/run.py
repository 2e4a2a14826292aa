"""`bertmesh operator`: run the kopf operator against the current kubeconfig or the in-cluster config.

Standalone (no kopf peering objects): run one replica with the Recreate strategy. The liveness endpoint is
kopf's, at http://<health-host>:<health-port>/healthz.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bertmesh_operator.prometheus import DEFAULT_URL
from bertmesh_operator.render.context import Autoscaler

log = logging.getLogger("bertmesh_operator")
CRD_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class OperatorConfig:
    """The operator's flags, parsed once."""

    namespaces: tuple[str, ...]  # empty: every namespace
    prometheus_url: str
    autoscaler: Autoscaler
    health_host: str
    health_port: int
    resync_seconds: float
    workers: int
    verbose: bool

    @property
    def liveness_endpoint(self) -> str:
        """The URL kopf serves its liveness probe on."""
        host = f"[{self.health_host}]" if ":" in self.health_host else self.health_host
        return f"http://{host}:{self.health_port}/healthz"


def _positive(kind: Callable[[str], float], low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value

    return parse


class _QuietTicks(logging.Filter):
    """Drops kopf's line per timer tick and per watched child or pod event ("Timer 'rollout' succeeded.")."""

    def __init__(self, *event_handlers: str) -> None:
        super().__init__()
        self.routine = frozenset(f"Handler '{handler}' succeeded." for handler in event_handlers)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Timer '") and message.endswith("' succeeded.")) and message not in self.routine


def parse_args(argv: list[str]) -> OperatorConfig:
    """Parse `bertmesh operator` flags."""
    parser = argparse.ArgumentParser(
        prog="bertmesh operator",
        description="Run the ModelDeployment operator (kopf) against the current kubeconfig or, in a pod, its "
        "service account. Standalone: run exactly one replica.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="serve only this namespace (repeatable); default: every namespace",
    )
    scope.add_argument("--all-namespaces", action="store_true", help="serve every namespace (the default)")
    parser.add_argument(
        "--prometheus-url",
        default=DEFAULT_URL,
        help=f"Prometheus for canary analysis and KEDA's autoscaling triggers; default: {DEFAULT_URL}",
    )
    parser.add_argument(
        "--autoscaler",
        choices=("keda", "hpa"),
        default="keda",
        help="what scales a track on inflight or queuedTokens: keda (a ScaledObject reading Prometheus; KEDA "
        "must be installed) or hpa (Pods metrics; a custom-metrics adapter must serve them); cpu is always a "
        "plain HPA; default: keda",
    )
    parser.add_argument("--health-host", default="0.0.0.0", help="liveness endpoint address; default: 0.0.0.0")
    parser.add_argument(
        "--health-port", type=_positive(int, 1), default=8080, help="liveness endpoint port (/healthz); default: 8080"
    )
    parser.add_argument(
        "--resync-seconds",
        type=_positive(float, 0.5),
        default=30.0,
        help="re-check every ModelDeployment this often (rollouts in flight: every 5s at least); default: 30",
    )
    parser.add_argument("--workers", type=_positive(int, 1), default=8, help="reconciles running at once; default: 8")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    return OperatorConfig(
        namespaces=tuple(dict.fromkeys(args.namespaces or ())),
        prometheus_url=args.prometheus_url,
        autoscaler="hpa" if args.autoscaler == "hpa" else "keda",
        health_host=args.health_host,
        health_port=int(args.health_port),
        resync_seconds=float(args.resync_seconds),
        workers=int(args.workers),
        verbose=bool(args.verbose),
    )


def main(argv: list[str]) -> int:
    """Run `bertmesh operator ...` (argv without the command name) until SIGTERM/SIGINT; return the exit status."""
    config = parse_args(argv)
    # Imported here: `bertmesh render` and `--help` need neither kopf nor the kubernetes client.
    import kopf

    from bertmesh_operator.errors import ApiRejectedError, TransientApiError
    from bertmesh_operator.handlers import (
        CHILD_EVENTS,
        MD_EVENTS,
        POD_EVENTS,
        Runtime,
        build_registry,
        operator_settings,
    )
    from bertmesh_operator.kube import KubeClient, load_api_client
    from bertmesh_operator.prometheus import PrometheusClient
    from bertmesh_operator.reconcile import Reconciler
    from bertmesh_operator.render import RenderOptions
    from bertmesh_operator.render.context import MD_LABEL
    from bertmesh_operator.rescan import KindRescan
    from bertmesh_operator.resource import GROUP, PLURAL, VERSION

    kopf.configure(verbose=config.verbose)
    if not config.verbose:
        # One line per object per tick says nothing; reconciles that change something log themselves.
        logging.getLogger("kopf.objects").addFilter(_QuietTicks(CHILD_EVENTS, POD_EVENTS, MD_EVENTS))
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per liveness probe
    try:
        api_client = load_api_client(pool_size=config.workers + 2)
    except Exception as error:  # kubernetes.config raises its own ConfigException, and OSError
        print(f"bertmesh operator: no Kubernetes credentials: {error}", file=sys.stderr)
        return 1
    kube = KubeClient(api_client)
    # kopf serves only the resources present at start-up (no CRD watch): wait for ours, then give up loudly.
    deadline = time.monotonic() + CRD_WAIT_SECONDS
    while True:
        try:
            if kube.served(f"{GROUP}/{VERSION}", PLURAL):
                break
            problem = f"the API server does not serve {PLURAL}.{GROUP}/{VERSION}: install the CRD"
        except (TransientApiError, ApiRejectedError) as error:
            problem = str(error)
        if time.monotonic() > deadline:
            print(f"bertmesh operator: {problem}", file=sys.stderr)
            return 1
        log.warning("waiting: %s", problem)
        time.sleep(2)

    executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="reconcile")
    runtime = Runtime(
        reconciler=Reconciler(
            kube,
            PrometheusClient(config.prometheus_url),
            RenderOptions(autoscaler=config.autoscaler, prometheus_url=config.prometheus_url),
        ),
        executor=executor,
        resync_seconds=config.resync_seconds,
        concurrency=config.workers,
    )
    # The children as they are before the first reconcile (kopf's watches keep them current from then on):
    # a reconcile that saw none would misread a ready canary as missing.
    try:
        missing = kube.list_children(config.namespaces, MD_LABEL, runtime.children.upsert)
    except (TransientApiError, ApiRejectedError) as error:
        print(f"bertmesh operator: cannot list the children: {error}", file=sys.stderr)
        executor.shutdown(wait=False)
        return 1
    if missing:
        log.warning("not served by the API server (install their CRDs): %s", ", ".join(missing))
    log.info(
        "bertmesh operator: %s, prometheus %s, autoscaler %s, resync %gs, liveness %s",
        ", ".join(config.namespaces) or "all namespaces",
        config.prometheus_url,
        config.autoscaler,
        config.resync_seconds,
        config.liveness_endpoint,
    )
    clusterwide = not config.namespaces
    settings = operator_settings(workers=config.workers, clusterwide=clusterwide)
    registry = build_registry(runtime)
    rescan = KindRescan(settings, registry)
    if clusterwide:  # kopf follows CRDs there (operator_settings): a kind it missed is scanned again
        runtime.reconciler.on_served = rescan
    try:
        kopf.run(
            registry=registry,
            settings=settings,
            insights=rescan.insights,
            standalone=True,
            clusterwide=clusterwide,
            namespaces=list(config.namespaces),
            liveness_endpoint=config.liveness_endpoint,
            memo=kopf.Memo(),
        )
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        api_client.close()  # type: ignore[no-untyped-call]
    return 0
