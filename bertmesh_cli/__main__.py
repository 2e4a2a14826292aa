"""`python -m bertmesh_cli <command>`: the `bertmesh` console script without the script."""

import sys

from bertmesh_cli import main

sys.exit(main())
