"""What installing a distribution brings, resolved from the metadata installed here (the image and GPU-run
packaging tests share this walk)."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def dependency_closure(distribution: str, extras: set[str]) -> set[str]:
    """The distributions `pip install "<distribution>[extras]"` installs, resolved from installed metadata."""
    seen: dict[str, set[str]] = {}
    todo = [(distribution, set(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if key in seen and wanted <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | wanted
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            environments = [{"extra": extra} for extra in wanted or {""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, set(req.extras)))
    return set(seen)
