"""Write the ModelDeployment CRD generated from the pydantic models; `--check` only verifies it is current.

Usage: .venv/bin/python hack/gen_crd.py [--check]
"""

from __future__ import annotations

import argparse
import sys

from bertmesh_operator.crd import CRD_PATH, crd_yaml


def main(argv: list[str]) -> int:
    """Generate (or check) operator/bertmesh_operator/crds/modeldeployments.serving.bertmesh.io.yaml."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed CRD is stale")
    args = parser.parse_args(argv)
    text = crd_yaml()
    current = CRD_PATH.read_text() if CRD_PATH.exists() else None
    if args.check:
        if current != text:
            print(f"{CRD_PATH} is stale: run `.venv/bin/python hack/gen_crd.py`", file=sys.stderr)
            return 1
        return 0
    CRD_PATH.parent.mkdir(parents=True, exist_ok=True)
    CRD_PATH.write_text(text)
    print(f"wrote {CRD_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
