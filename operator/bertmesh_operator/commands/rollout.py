"""`bertmesh rollout status|promote|abort NAME [-n NAMESPACE]`: read and steer a canary rollout.

`status` prints what the operator wrote in the ModelDeployment's status. `promote` and `abort` set the
rollout-command annotation for the canary revision being rolled out; the operator acts on it at its next
reconcile (at once: an annotation change is an update) and ignores it for any later rollout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bertmesh_operator.errors import ApiRejectedError, InvalidSpecError, TransientApiError
from bertmesh_operator.resource import parse_model_deployment
from bertmesh_operator.rollout import COMMAND_ANNOTATION, Command, command_applies_to_mode
from bertmesh_operator.states import Action, Phase, RolloutMode, command_applies, phase_of

FIELD_MANAGER = "bertmesh-rollout"


class RolloutCommandError(Exception):
    """A command that cannot apply to the ModelDeployment as it is; the message says why."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertmesh rollout", description="Read and steer a canary rollout.")
    parser.add_argument("action", choices=("status", "promote", "abort"))
    parser.add_argument("name", help="the ModelDeployment")
    parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, or the pod's service account")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text", help="status format")
    return parser


def _age(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _track(track: Mapping[str, Any] | None) -> str:
    if not track:
        return "-"
    model = track.get("model") or {}
    label = model.get("revision") or model.get("storageUri") or "?"
    return f"{label} (revision {track.get('revision', '?')}), {track.get('readyReplicas', 0)} ready"


def _mode_lines(status: Mapping[str, Any]) -> list[str]:
    canary = status.get("canary") or {}
    stable_space = (status.get("stable") or {}).get("embeddingSpace")
    lines = []
    if canary.get("mode"):
        lines.append(f"Mode:          {canary['mode']}: {canary.get('modeReason') or '-'}")
    if canary.get("mode") == RolloutMode.REINDEX:
        lines.append(f"Mirror:        {canary.get('mirrorPercent', 0)}% of live traffic mirrored to the canary")
    if stable_space:
        spaces = f"stable {stable_space}"
        if canary.get("embeddingSpace"):
            spaces += f", canary {canary['embeddingSpace']}"
        lines.append(f"Spaces:        {spaces}")
    return lines


def format_status(md: Mapping[str, Any], now: datetime | None = None) -> str:
    """The rollout as a person reads it: phase, mode and why, weights, step, checks, revisions, conditions."""
    now = now or datetime.now(UTC)
    meta, status = md.get("metadata") or {}, md.get("status") or {}
    threshold = steps = None
    try:
        policy = parse_model_deployment(md).spec.traffic.policy
        threshold, steps = policy.threshold, len(policy.schedule)
    except InvalidSpecError:
        pass
    canary = status.get("canary")
    weight = canary.get("weight", 0) if canary else 0
    lines = [
        f"ModelDeployment {meta.get('namespace', 'default')}/{meta.get('name')} "
        f"(generation {meta.get('generation', '?')}, observed {status.get('observedGeneration', '-')})",
        f"Phase:         {status.get('phase') or 'not reconciled yet'}",
        *_mode_lines(status),
        f"Weights:       stable {100 - weight}%, canary {weight}%",
    ]
    if canary:
        of_steps = canary.get("steps") or steps or "?"
        of_threshold = f"/{threshold}" if threshold is not None else ""
        lines.append(f"Step:          {canary.get('step', 0)}/{of_steps} (0: waiting for a ready canary)")
        lines.append(f"Failed checks: {canary.get('failedChecks', 0)}{of_threshold}")
    lines.append(f"Stable:        {_track(status.get('stable'))}")
    lines.append(f"Canary:        {_track(canary)}")
    if status.get("grpcEndpoint"):
        lines.append(f"Endpoint:      {status['grpcEndpoint']}")
    if status.get("message"):
        lines.append(f"Message:       {status['message']}")
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        rows = [("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")]
        rows += [
            (
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", ""),
                _age(c.get("lastTransitionTime"), now),
                c.get("message", ""),
            )
            for c in conditions
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            lines.append("  " + "  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


# Why a command does nothing in a phase, where the phase alone does not say it.
_NOT_APPLICABLE: dict[Phase | None, str] = {
    Phase.PROMOTING: "it is already being promoted",
    Phase.ABORTED: "it is already aborted (promote it, or change the spec)",
}


def command_for(md: Mapping[str, Any], action: Action) -> Command:
    """The command to write for `action`, or RolloutCommandError saying why there is nothing to act on."""
    meta, status = md.get("metadata") or {}, md.get("status") or {}
    where = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
    phase = phase_of(status.get("phase"))
    shown = status.get("phase") or "not reconciled yet"
    canary = status.get("canary") or {}
    if not canary.get("revision"):
        raise RolloutCommandError(f"no rollout in progress for {where} (phase {shown}): nothing to {action}")
    if phase is None or not command_applies(action, phase):
        hint = _NOT_APPLICABLE.get(phase, f"phase {shown}")
        raise RolloutCommandError(f"cannot {action} canary {canary['revision']} of {where}: {hint}")
    mode = RolloutMode(canary["mode"]) if canary.get("mode") in set(RolloutMode) else RolloutMode.WEIGHTED
    if not command_applies_to_mode(action, phase, mode):
        raise RolloutCommandError(
            f"cannot {action} canary {canary['revision']} of {where}: an aborted re-index canary has no "
            "replicas to take 100% of traffic (change the spec to roll it out again)"
        )
    return Command(action, str(canary["revision"]))


def main(argv: list[str]) -> int:
    """Run `bertmesh rollout ...` (argv without the command name); return the exit status."""
    args = _parser().parse_args(argv)
    # Imported here so that `--help` works without credentials or the kubernetes client configured.
    from bertmesh_operator.kube import KubeClient, kubeconfig_namespace, load_api_client

    try:
        api_client = load_api_client(args.kubeconfig)
    except Exception as error:  # kubernetes.config's ConfigException, a missing file
        print(f"bertmesh rollout: no Kubernetes credentials: {error}", file=sys.stderr)
        return 1
    namespace = args.namespace or kubeconfig_namespace(args.kubeconfig)
    with api_client:
        kube = KubeClient(api_client, field_manager=FIELD_MANAGER)
        try:
            md = kube.get_model_deployment(namespace, args.name)
            if md is None:
                print(f"bertmesh rollout: modeldeployment {namespace}/{args.name} not found", file=sys.stderr)
                return 1
            if args.action == "status":
                print(json.dumps(md.get("status") or {}, indent=2) if args.output == "json" else format_status(md))
                return 0
            command = command_for(md, args.action)
            kube.annotate_model_deployment(namespace, args.name, {COMMAND_ANNOTATION: command.annotation()})
        except RolloutCommandError as error:
            print(f"bertmesh rollout: {error}", file=sys.stderr)
            return 1
        except (TransientApiError, ApiRejectedError) as error:
            print(f"bertmesh rollout: {error}", file=sys.stderr)
            return 1
    print(
        f"{command.action} of canary revision {command.revision} requested for {namespace}/{args.name}; "
        f"the operator acts on it at its next reconcile (bertmesh rollout status {args.name} -n {namespace})"
    )
    return 0
