"""`python -m bertmesh_cli <command>`: the `bertmesh` console script without the script."""

from bertmesh_cli import run

run()
