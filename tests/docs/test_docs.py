"""The install guide's commands work as written, and docs/crd.md is what the CRD says today."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock
import pytest
import yaml
from packaging.requirements import Requirement

from bertmesh_operator.crd import CRD_PATH, openapi_schema
from bertmesh_operator.resource import parse_model_deployment
from model_server.client_cli import TARGET_VARIABLE
from model_server.config import parse_args
from tests.charts.chart import CHART, RELEASE_NAMESPACE, REPO, Helm

INSTALL = REPO / "docs" / "install.md"
CRD_DOC = REPO / "docs" / "crd.md"


def gen_crd_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_crd_docs", REPO / "hack" / "gen_crd_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shell_commands(markdown: str) -> list[list[str]]:
    """Every command in the ```sh blocks, split like a shell: continuation lines and quotes spanning lines
    joined, trailing comments and here-documents dropped."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, flags=re.S):
        pending, heredoc = "", None
        for line in block.replace("\\\n", " ").splitlines():
            if heredoc is not None:
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            line = re.sub(r"\s+#\s.*$", "", line).strip() if "'" not in line else line.strip()
            if not line or line.startswith("#"):
                continue
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending)
            except ValueError:  # a quote continues on the next line
                continue
            if "<<" in pending:
                heredoc = pending.split("<<", 1)[1].strip().strip("'\"")
            commands.append(words)
            pending = ""
    return commands


def test_crd_doc_is_current() -> None:
    assert CRD_DOC.read_text() == gen_crd_docs().render_doc(), "stale: run `.venv/bin/python hack/gen_crd_docs.py`"
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_crd_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_crd_doc_covers_every_field_and_rule() -> None:
    doc = CRD_DOC.read_text()
    gen = gen_crd_docs()
    schema = openapi_schema()
    for section in ("spec", "status"):
        for path, _, _ in gen.fields(schema["properties"][section], section):
            if path != section:
                assert f"| `{path}` |" in doc, path
    for _, rule in gen.rules(schema, ""):
        assert gen._cell(rule["message"]) in doc
    assert str(CRD_PATH.relative_to(REPO)) in doc  # says where it comes from


def test_every_path_the_guide_names_exists() -> None:
    text = INSTALL.read_text()
    paths = set(re.findall(r"(?:examples|deploy|images|charts|operator|docs)/[\w./-]+\.(?:yaml|md|py)\b", text))
    paths |= set(re.findall(r"images/[\w-]+/Dockerfile", text))
    assert len(paths) >= 8
    for path in paths:
        assert (REPO / path).exists(), path


def test_the_guide_installs_the_chart_into_its_own_namespace_and_pins_istio() -> None:
    commands = shell_commands(INSTALL.read_text())
    expected = ["helm", "install", "bertmesh", "charts/bertmesh", "-n", "bertmesh-system", "--create-namespace"]
    assert expected in commands
    istio = [c for c in commands if c[:2] == ["helm", "install"] and "istio/" in " ".join(c)]
    assert [c[3] for c in istio] == ["istio/base", "istio/istiod"]
    assert all("--version" in c for c in istio)


CHART_COMMANDS = [
    c for c in shell_commands(INSTALL.read_text()) if c[:2] in (["helm", "install"], ["helm", "upgrade"])
    and "charts/bertmesh" in c
]  # fmt: skip


@pytest.mark.parametrize(
    "command",
    CHART_COMMANDS,
    ids=lambda c: " ".join(c[1:3] + [a for a in c if a.startswith(("scope", "monitoring", "mesh"))][:1]),
)
def test_each_helm_command_of_the_guide_renders(helm: Helm, command: list[str]) -> None:
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    args = ["template", "bertmesh", str(CHART), "--namespace", RELEASE_NAMESPACE]
    if "--reuse-values" in command:  # an upgrade of the namespaced install above keeps its values
        args += ["--set", "scope=namespaced", "--set", "namespaces={search,recommendations}"]
    for value in sets:
        args += ["--set", value]
    assert helm.run(*args).stdout


def test_the_guides_canary_patch_is_a_valid_spec() -> None:
    (command,) = [c for c in shell_commands(INSTALL.read_text()) if c[:3] == ["kubectl", "patch", "md"]]
    patch = json.loads(command[command.index("-p") + 1])
    md = yaml.safe_load((REPO / "examples" / "cpu-embedding.yaml").read_text())
    md["spec"].setdefault("traffic", {}).update(patch["spec"]["traffic"])
    jsonschema.Draft202012Validator(openapi_schema()).validate(md)
    assert parse_model_deployment(md).spec.traffic.canary is not None


def test_the_readme_shows_make_serve_with_flags_that_bertmesh_serve_takes() -> None:
    readme = (REPO / "README.md").read_text()
    commands = [c for c in shell_commands(readme) if c[:2] == ["make", "serve"] and len(c) > 2]
    assert commands, "the README shows `make serve ARGS=...`"
    for command in commands:
        (assignment,) = command[2:]
        name, _, flags = assignment.partition("=")
        assert name == "ARGS"
        parse_args(shlex.split(flags))  # exits 2 on a flag `bertmesh serve` does not take


def test_the_readme_names_the_variable_that_points_the_client_commands_at_a_server() -> None:
    exports = [c for c in shell_commands((REPO / "README.md").read_text()) if c[:1] == ["export"]]
    assert [c[1].partition("=")[0] for c in exports] == [TARGET_VARIABLE]


def test_every_module_the_readmes_python_imports_comes_with_an_install_the_readme_names() -> None:
    readme = (REPO / "README.md").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    named = {""} | set(re.findall(r"pip install '\.\[(\w+)\]'", readme))
    installs = {
        extra: {Requirement(r).name for r in project["optional-dependencies"].get(extra, project["dependencies"])}
        for extra in named
    }
    distributions = importlib.metadata.packages_distributions()
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for top in {name.partition(".")[0] for name in names} - set(sys.stdlib_module_names):
                (distribution,) = distributions[top]
                where = [extra for extra, names in installs.items() if distribution.lower() in names]
                assert where or distribution == "bertmesh", f"the README imports {top}: name the extra that installs it"


def test_the_guide_renders_an_example_in_the_namespace_it_applies_it_to() -> None:
    def namespace(command: list[str]) -> str | None:
        return command[command.index("-n") + 1] if "-n" in command else None

    for_example: dict[str, set[str | None]] = {}
    for command in shell_commands(INSTALL.read_text()):
        if command[:2] in (["bertmesh", "render"], ["kubectl", "apply"]) and "-f" in command:
            path = command[command.index("-f") + 1]
            if path.startswith("examples/"):
                for_example.setdefault(path, set()).add(namespace(command))
    assert for_example
    for path, namespaces in for_example.items():
        assert len(namespaces) == 1, f"{path} is rendered and applied in {namespaces}"


# Words that only make sense to someone who followed the tracker: issue numbers, run letters, device loans.
TRACKER_LANGUAGE = re.compile(
    r"\bissues?[- ]\d+|\bthe issue'?s?\b|\bruns? [A-Z]\b|\blent\b|\bthis task\b|\bnot drawn\b", flags=re.I
)


@pytest.mark.parametrize("path", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_the_docs_speak_to_a_reader_who_never_saw_the_tracker(path: Path) -> None:
    found = [
        (n, m.group())
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for m in TRACKER_LANGUAGE.finditer(line)
    ]
    assert not found, f"{path.name}: tracker language at (line, words) {found}"
