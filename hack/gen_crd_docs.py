"""Write docs/crd.md, the ModelDeployment reference, from the generated CRD's schema; `--check` only verifies it.

Every field with its type, bounds, default and description, then every CEL rule with its message, so the doc
says exactly what the API server enforces. Usage: .venv/bin/python hack/gen_crd_docs.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bertmesh_operator.crd import CRD_PATH, crd_manifest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "crd.md"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return f"`{text}`"


def type_of(node: dict[str, Any]) -> str:
    """`string`, `integer`, `array of object`, `map of string`, ... (with the format when there is one)."""
    kind = str(node.get("type", "any"))
    if kind == "array" and isinstance(node.get("items"), dict):
        kind = f"array of {type_of(node['items'])}"
    elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
        kind = f"map of {type_of(node['additionalProperties'])}"
    if "format" in node:
        kind += f" ({node['format']})"
    return kind


def _range(low: Any, high: Any, unit: str = "") -> str | None:
    if low is None and high is None:
        return None
    if low is not None and high is not None:
        return f"{low} to {high}{unit}"
    return f"≥ {low}{unit}" if low is not None else f"≤ {high}{unit}"


def bounds(node: dict[str, Any]) -> str:
    """Every constraint of a node, spelled out."""
    parts = [
        _range(node.get("minimum"), node.get("maximum")),
        _range(node.get("minLength"), node.get("maxLength"), " characters"),
        _range(node.get("minItems"), node.get("maxItems"), " items"),
        _range(node.get("minProperties"), node.get("maxProperties"), " entries"),
    ]
    out = [p for p in parts if p]
    if "enum" in node:
        out.append("one of " + ", ".join(_code(v) for v in node["enum"]))
    if "pattern" in node:
        out.append(f"pattern {_code(node['pattern'])}")
    if "x-kubernetes-list-type" in node:
        out.append(f"list type {_code(node['x-kubernetes-list-type'])}")
    for key, what in (("items", "each item"), ("additionalProperties", "each value")):
        inner = node.get(key)
        if isinstance(inner, dict) and "properties" not in inner and bounds(inner):
            out.append(f"{what}: {bounds(inner)}")
    return "; ".join(out)


def default_of(node: dict[str, Any]) -> str:
    """The default as written in the CRD; objects say that their fields' defaults apply."""
    if "default" not in node:
        return ""
    if isinstance(node["default"], dict):
        return "its fields' defaults"
    return _code(node["default"])


def fields(node: dict[str, Any], path: str, required: bool = False) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, node, required) for a node and everything below it, depth first in schema order."""
    yield path, node, required
    needed = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        yield from fields(sub, f"{path}.{name}", name in needed)
    if isinstance(node.get("items"), dict) and "properties" in node["items"]:
        for name, sub in node["items"]["properties"].items():
            yield from fields(sub, f"{path}[].{name}", name in set(node["items"].get("required", [])))


def rules(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path of the object, rule) for every x-kubernetes-validations entry."""
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule
    for name, sub in node.get("properties", {}).items():
        yield from rules(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from rules(node["items"], f"{path}[]")


def _table(section: dict[str, Any], name: str) -> list[str]:
    lines = [
        "| field | type | required | bounds | default | description |",
        "|---|---|---|---|---|---|",
    ]
    for path, node, required in fields(section, name):
        if path == name:
            continue
        row = [
            f"`{path}`",
            type_of(node),
            "yes" if required else "",
            bounds(node),
            default_of(node),
            node.get("description", ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def render_doc() -> str:
    """docs/crd.md as text."""
    crd = crd_manifest()
    spec = crd["spec"]
    (version,) = spec["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    api = f"{spec['group']}/{version['name']}"
    source = CRD_PATH.relative_to(ROOT)
    out = [
        f"# {spec['names']['kind']} ({api})",
        "",
        f"<!-- Generated by hack/gen_crd_docs.py from {source}. Do not edit: run `.venv/bin/python "
        "hack/gen_crd_docs.py`. -->",
        "",
        schema["description"],
        "",
        f"Namespaced; `kubectl get {spec['names']['plural']}` (short name "
        f"`{', '.join(spec['names']['shortNames'])}`, category `{', '.join(spec['names']['categories'])}`) shows "
        + ", ".join(f"{c['name']} (`{c['jsonPath']}`)" for c in version["additionalPrinterColumns"])
        + ". Examples: [`examples/`](../examples). Every string and list is bounded; the API server refuses a "
        "value outside the bounds below, or one breaking a rule at the end, before the operator sees it. A "
        "default is filled in by the API server when the field is left out.",
        "",
        "## spec",
        "",
        schema["properties"]["spec"]["description"],
        "",
        *_table(schema["properties"]["spec"], "spec"),
        "",
        "## status",
        "",
        "Written by the operator (the status subresource); read it with `kubectl get md NAME -o yaml`.",
        "",
        *_table(schema["properties"]["status"], "status"),
        "",
        "## Validation rules",
        "",
        "CEL rules (`x-kubernetes-validations`) the API server evaluates on create and update; the message is "
        "what `kubectl apply` prints when one fails.",
        "",
        "| on | rule | message |",
        "|---|---|---|",
    ]
    for path, rule in rules(schema, ""):
        where = (path[1:] or "(the object)") + rule.get("fieldPath", "")
        out.append(f"| `{_cell(where)}` | `{_cell(rule['rule'])}` | {_cell(rule['message'])} |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    """Write (or, with --check, verify) docs/crd.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/crd.md is stale")
    args = parser.parse_args(argv)
    text = render_doc()
    current = DOC.read_text() if DOC.exists() else None
    if args.check:
        if current != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run `.venv/bin/python hack/gen_crd_docs.py`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
