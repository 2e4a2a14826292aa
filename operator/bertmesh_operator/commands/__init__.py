"""The operator's side of the `bertmesh` command, one module per subcommand, each with `main(argv) -> int`.

`render` (offline: no cluster, no kopf, no kubernetes client), `run` (`bertmesh operator`) and `rollout`
(`bertmesh rollout status|promote|abort`). The `bertmesh_cli` dispatcher imports the one a command line names;
kopf and the kubernetes client are imported only when `operator` or `rollout` actually run.
"""
