"""The `bertmesh` command: one entry point for both sides, each image carrying only the side it runs.

A table names every subcommand's module by string; the dispatcher imports the one a command line asks for and
nothing else, so the operator image (no `model_server`, no torch) runs `render`, `operator` and `rollout`, and
the model-server image (no `bertmesh_operator`) runs `serve`, `bench` and the client commands. A command whose
side is not installed says so and which extra installs it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Subcommand:
    """One `bertmesh <name>`: where its `main(argv) -> int` lives and which side (extra) provides it."""

    name: str
    summary: str
    module: str
    extra: str  # the pip extra that installs this side: bertmesh[<extra>]
    takes_name: bool = False  # main() gets the command name as argv[0] (one main serving several commands)

    @property
    def package(self) -> str:
        """The top-level package of the side this command belongs to."""
        return self.module.partition(".")[0]


SUBCOMMANDS = (
    Subcommand(
        "serve",
        "run the gRPC inference server (default: bundled all-MiniLM-L6-v2 on 127.0.0.1:50051)",
        "model_server.server",
        "server",
    ),
    Subcommand("embed", "embed texts with a running server", "model_server.client_cli", "server", takes_name=True),
    Subcommand(
        "classify", "classify texts with a running server", "model_server.client_cli", "server", takes_name=True
    ),
    Subcommand(
        "classify-tokens",
        "label the spans of texts (entities) with a running server",
        "model_server.client_cli",
        "server",
        takes_name=True,
    ),
    Subcommand(
        "fill-mask",
        "fill the mask token of texts with a running server",
        "model_server.client_cli",
        "server",
        takes_name=True,
    ),
    Subcommand(
        "rerank",
        "rank documents by relevance to a query with a running server",
        "model_server.client_cli",
        "server",
        takes_name=True,
    ),
    Subcommand(
        "tokenize", "show how a running server tokenizes texts", "model_server.client_cli", "server", takes_name=True
    ),
    Subcommand("info", "show what a running server serves", "model_server.client_cli", "server", takes_name=True),
    Subcommand(
        "render",
        "print the objects the operator would apply for a ModelDeployment (offline)",
        "bertmesh_operator.commands.render",
        "operator",
    ),
    Subcommand(
        "operator", "run the operator against the current kubeconfig", "bertmesh_operator.commands.run", "operator"
    ),
    Subcommand("rollout", "status|promote|abort a canary rollout", "bertmesh_operator.commands.rollout", "operator"),
    Subcommand(
        "bench",
        "capacity report: throughput, latency, memory and fidelity per precision, replicas for a target",
        "model_server.capacity",
        "server",
    ),
)
_BY_NAME = {command.name: command for command in SUBCOMMANDS}
# The image that carries each side (images/<name>/Dockerfile).
_IMAGES = {"server": "model-server", "operator": "operator"}


def usage() -> str:
    """The top-level help: every subcommand and its one-line summary."""
    width = max(len(command.name) for command in SUBCOMMANDS) + 4
    lines = [f"  {command.name.ljust(width)}{command.summary}" for command in SUBCOMMANDS]
    return (
        "usage: bertmesh <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nRun `bertmesh <command> --help` for the options of one command, `bertmesh --version` for the version.\n"
    )


def version() -> str:
    """The installed bertmesh distribution's version ("unknown" when run from sources not installed)."""
    try:
        return importlib.metadata.version("bertmesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def load(command: Subcommand) -> Callable[[list[str]], int] | str:
    """The command's `main`, or why it cannot run here (its side, or a dependency of it, is not installed)."""
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as error:
        missing = error.name or str(error)
        if missing.partition(".")[0] == command.package:
            what = f"the {command.package} package is not installed here"
        else:
            what = f"it needs {missing}, which is not installed here"
        image = _IMAGES[command.extra]
        return f"bertmesh {command.name}: {what}: install bertmesh[{command.extra}], or run the {image} image"
    main: Callable[[list[str]], int] = module.main
    return main


# What a shell reports for a command killed by SIGPIPE (`yes | head`), so `set -o pipefail` scripts see the same.
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: list[str] | None = None) -> int:
    """Run the bertmesh CLI and return its exit status; a reader that stops early (`| head`) ends it quietly."""
    try:
        status = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python ignores SIGPIPE, so the write raises; stdout is pointed at /dev/null so that the interpreter's
        # own flush at exit does not raise (and print) the same error again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


# Native libraries whose objects live until interpreter teardown and which then print a report of every one
# (`nanobind: leaked N instances!`, ~30 lines): OpenAI's Triton, which torch._dynamo imports whenever
# transformers' BERT modules load, though CPU serving never runs it.
NOISY_AT_TEARDOWN = frozenset({"triton"})


def run() -> None:
    """The console script: `main`, then an exit that skips interpreter teardown where a library that prints
    leak reports there was loaded (output flushed and logs closed first, so nothing of the command's is lost)."""
    status = main()
    if NOISY_AT_TEARDOWN.isdisjoint(sys.modules):
        sys.exit(status)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A reader that left, or a stream already closed: nothing is left to keep.
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(status)


def _dispatch(args: list[str]) -> int:
    """Run the command line `args` names."""
    if args[:1] in (["--version"], ["-V"]):
        print(f"bertmesh {version()}")
        return 0
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    command = _BY_NAME.get(name)
    if command is None:
        print(f"bertmesh: unknown command {name!r}\n\n{usage()}", file=sys.stderr, end="")
        return 2
    found = load(command)
    if isinstance(found, str):
        print(found, file=sys.stderr)
        return 1
    return int(found([name, *rest] if command.takes_name else rest))
