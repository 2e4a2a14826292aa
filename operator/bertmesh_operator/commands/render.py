"""`bertmesh render -f FILE`: print the objects the operator would apply for ModelDeployments, offline.

Reads the rollout state from each object's status when present, as the operator does; needs neither kopf nor
the kubernetes client.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from bertmesh_operator.errors import InvalidSpecError
from bertmesh_operator.render import RenderOptions, render
from bertmesh_operator.render.context import DEFAULT_PROMETHEUS_URL, DEFAULT_STORAGE_INITIALIZER
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import follow_spec
from bertmesh_operator.status import rollout_state


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values out in full: kubectl and humans read the output, not YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertmesh render",
        description="Print the objects the operator applies for ModelDeployments, offline. The rollout "
        "state is read from each object's status when present (as the operator does); a change to model or "
        "runtime shows its canary as the operator's next reconcile creates it (at weight 0).",
    )
    parser.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML (multi-document); - is stdin")
    parser.add_argument(
        "-n",
        "--namespace",
        help="namespace of ModelDeployments that name none, as `kubectl apply -n` (default: their own, else default)",
    )
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="default: yaml")
    parser.add_argument("--cluster-domain", default="cluster.local", help="default: cluster.local")
    parser.add_argument("--trust-domain", default="cluster.local", help="Istio trust domain; default: cluster.local")
    parser.add_argument(
        "--storage-initializer-image",
        default=DEFAULT_STORAGE_INITIALIZER,
        help=f"downloads s3/gs/https models; default: {DEFAULT_STORAGE_INITIALIZER}",
    )
    parser.add_argument(
        "--autoscaler",
        choices=("keda", "hpa"),
        default="keda",
        help="as the operator's flag: keda (ScaledObjects) or hpa for inflight/queuedTokens; default: keda",
    )
    parser.add_argument(
        "--prometheus-url",
        default=DEFAULT_PROMETHEUS_URL,
        help=f"as the operator's flag: what KEDA's triggers query; default: {DEFAULT_PROMETHEUS_URL}",
    )
    return parser


def _documents(text: str) -> Iterator[tuple[int, Any]]:
    for index, doc in enumerate(yaml.safe_load_all(text), start=1):
        if doc is not None:
            yield index, doc


def _in_namespace(doc: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    """The document placed in `namespace` as `kubectl apply -n` does; a different namespace of its own is refused."""
    meta = doc.get("metadata")
    if namespace is None or not isinstance(meta, dict):
        return doc
    own = meta.get("namespace")
    if own is not None and own != namespace:
        raise ValueError(f"its namespace {own!r} does not match --namespace {namespace!r}")
    return {**doc, "metadata": {**meta, "namespace": namespace}}


def render_documents(
    text: str, options: RenderOptions, now: datetime, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Every object for every ModelDeployment in a multi-document YAML text; raises ValueError if invalid."""
    objects: list[dict[str, Any]] = []
    for index, doc in _documents(text):
        if not isinstance(doc, dict):
            raise ValueError(f"document {index}: not a mapping")
        try:
            doc = _in_namespace(doc, namespace)
        except ValueError as error:
            raise ValueError(f"document {index}: {error}") from None
        try:
            md = parse_model_deployment(doc)
        except InvalidSpecError as error:
            raise ValueError(f"document {index}: {error}") from None
        state = follow_spec(rollout_state(md.status, md.spec), md.spec, now)
        objects += render(md, state=state, options=options)
    if not objects:
        raise ValueError("no ModelDeployment found")
    return objects


def _write(objects: list[dict[str, Any]], output: str, out: TextIO) -> None:
    if output == "json":
        json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, out, indent=2)
        out.write("\n")
        return
    yaml.dump_all(objects, out, Dumper=_NoAliasDumper, sort_keys=False, explicit_start=True, width=120)


def main(argv: list[str]) -> int:
    """Run `bertmesh render ...` (argv without the command name) and return the exit status."""
    args = _render_parser().parse_args(argv)
    source = args.filename
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as error:
        print(f"bertmesh render: cannot read {source}: {error.strerror}", file=sys.stderr)
        return 1
    options = RenderOptions(
        cluster_domain=args.cluster_domain,
        trust_domain=args.trust_domain,
        storage_initializer_image=args.storage_initializer_image,
        autoscaler="hpa" if args.autoscaler == "hpa" else "keda",
        prometheus_url=args.prometheus_url,
    )
    try:
        objects = render_documents(text, options, datetime.now(UTC), args.namespace)
    except yaml.YAMLError as error:
        print(f"bertmesh render: {source}: not valid YAML: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"bertmesh render: {source}: {error}", file=sys.stderr)
        return 1
    _write(objects, args.output, sys.stdout)
    return 0
