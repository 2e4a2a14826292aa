"""`bertmesh <command>`: every command reaches its side's `main`, and a missing side or dependency says what
to install instead of a traceback."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bertmesh_cli import EXIT_BROKEN_PIPE, SUBCOMMANDS, Subcommand, load, main

REPO = Path(__file__).parents[2]


def test_every_command_loads_when_both_sides_are_installed() -> None:
    for command in SUBCOMMANDS:
        found = load(command)
        assert callable(found), found


def test_help_lists_every_command_and_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert f"  {command.name} " in listed and command.summary in listed
    assert main([]) == 2
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err


def test_a_missing_dependency_of_a_side_is_named_with_the_extra_that_brings_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "probe_side").mkdir()
    (tmp_path / "probe_side" / "__init__.py").write_text("")
    (tmp_path / "probe_side" / "command.py").write_text("import a_module_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = Subcommand("probe", "a command whose dependency is missing", "probe_side.command", "operator")
    assert load(probe) == (
        "bertmesh probe: it needs a_module_nobody_installed, which is not installed here: "
        "install bertmesh[operator], or run the operator image"
    )
    absent = Subcommand("serve", "", "a_side_nobody_installed.server", "server")
    assert load(absent) == (
        "bertmesh serve: the a_side_nobody_installed package is not installed here: install bertmesh[server], "
        "or run the model-server image"
    )
    sys.modules.pop("probe_side", None)


def test_commands_that_serve_several_names_get_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def record(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    monkeypatch.setattr("model_server.client_cli.main", record)
    monkeypatch.setattr("bertmesh_operator.commands.rollout.main", record)
    assert main(["embed", "--target", "x:1", "hello"]) == 0
    assert main(["rollout", "status", "minilm"]) == 0
    assert seen == [["embed", "--target", "x:1", "hello"], ["status", "minilm"]]


@pytest.mark.parametrize("command", [["help"], ["render", "-f", str(REPO / "examples" / "cpu-embedding.yaml")]])
def test_a_reader_that_stops_early_ends_the_command_quietly(command: list[str]) -> None:
    # A pipe whose reading end is closed before the command starts: its first write fails, as under `| head`.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bertmesh_cli", *command], stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == EXIT_BROKEN_PIPE


def test_version_prints_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    expected = f"bertmesh {importlib.metadata.version('bertmesh')}\n"
    assert main(["--version"]) == 0
    assert main(["-V"]) == 0
    assert capsys.readouterr().out == expected * 2
    assert expected.strip() == f"bertmesh {tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['version']}"
