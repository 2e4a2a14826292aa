"""The one load generator of `bertmesh bench` and `python -m bench`: schedules, drivers, latency statistics.

`schedules` and `stats` are pure (arrival times, percentiles); `drivers` runs closed and open loops over any
async call and holds the warm-up, counting and timeout rules both benchmarks share. Nothing here knows a
model, a server or gRPC: callers pass an async function that sends one request.
"""
