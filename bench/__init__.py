"""bertmesh benchmarks: workload generation, peer systems, interleaved runs and reports (never in the test run)."""
