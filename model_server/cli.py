"""The `bertmesh` command line: one entry point for both sides, each subcommand imported only when used.

The operator side (`render`, `operator`, `rollout`) lives in `bertmesh_operator.cli` and never imports torch;
the server side imports torch only for `serve`.
"""

from __future__ import annotations

import sys

_OPERATOR_COMMANDS = ("render", "operator", "rollout")
_USAGE = """usage: bertmesh <command> [options]

commands:
  serve       run the gRPC inference server (default: bundled all-MiniLM-L6-v2 on 127.0.0.1:50051)
  embed       embed texts with a running server
  classify    classify texts with a running server
  info        show what a running server serves
  render      print the objects the operator would apply for a ModelDeployment (offline)
  operator    run the operator against the current kubeconfig
  rollout     status|promote|abort a canary rollout
  bench       capacity report: throughput, latency, memory and fidelity per precision, replicas for a target

Run `bertmesh <command> --help` for the options of one command.
"""


def main(argv: list[str] | None = None) -> int:
    """Run the bertmesh CLI and return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in _OPERATOR_COMMANDS:
        from bertmesh_operator.cli import main as operator_main

        return int(operator_main([command, *rest]))
    if command == "serve":
        from model_server.server import main as serve_main

        return serve_main(rest)
    if command == "bench":
        from model_server.capacity import main as bench_main

        return bench_main(rest)
    if command in ("embed", "classify", "info"):
        from model_server.client_cli import main as client_main

        return client_main([command, *rest])
    print(f"bertmesh: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr, end="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
