"""`bertmesh embed|classify|info|...`: where the commands send, what they print, and how a failure reads."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_server import client_cli
from model_server.tasks import FloatArray
from tests.server.harness import free_port


class FakeClient:
    """Stands in for BertmeshClient: records where it was pointed and each call's inputs."""

    targets: list[str] = []
    calls: list[list[str]] = []
    max_inputs = 0  # the server's max_inputs_per_request

    def max_inputs_per_request(self) -> int:
        return FakeClient.max_inputs

    def __init__(self, target: str, **_: Any) -> None:
        FakeClient.targets.append(target)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def embed(self, texts: Sequence[str], **_: Any) -> FloatArray:
        FakeClient.calls.append(list(texts))
        return np.array([[float(len(t)), 0.5] for t in texts], dtype=np.float32)


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeClient]]:
    FakeClient.targets, FakeClient.calls, FakeClient.max_inputs = [], [], 0
    monkeypatch.setattr(client_cli, "BertmeshClient", FakeClient)
    yield FakeClient


def test_help_shows_the_default_target_and_the_variable_that_sets_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        client_cli.main(["embed", "--help"], environ={})
    shown = " ".join(capsys.readouterr().out.split())
    assert "default: 127.0.0.1:50051; $BERTMESH_TARGET sets it" in shown
    with pytest.raises(SystemExit):
        client_cli.main(["embed", "--help"], environ={"BERTMESH_TARGET": "search:50051"})
    assert "default: search:50051;" in " ".join(capsys.readouterr().out.split())


def test_the_target_comes_from_the_flag_then_the_environment_then_the_default(
    fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    assert client_cli.main(["embed", "a"], environ={}) == 0
    assert client_cli.main(["embed", "a"], environ={"BERTMESH_TARGET": "search:50051"}) == 0
    assert client_cli.main(["embed", "a", "--target", "x:1"], environ={"BERTMESH_TARGET": "search:50051"}) == 0
    assert fake_client.targets == ["127.0.0.1:50051", "search:50051", "x:1"]


def test_a_server_that_is_not_there_is_named_with_how_to_point_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    assert client_cli.main(["info", "--target", target, "--timeout", "10"], environ={}) == 1
    error = capsys.readouterr().err
    assert error.startswith("bertmesh: UNAVAILABLE: ")
    assert f"no server answering at {target}? set --target host:port or $BERTMESH_TARGET" in error


def test_embed_prints_one_compact_json_line_per_input(
    fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    assert client_cli.main(["embed", "a", "a longer text"], environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"text": "a", "embedding": [1.0, 0.5]},
        {"text": "a longer text", "embedding": [13.0, 0.5]},
    ]
    assert all(" " not in line.replace("a longer text", "") for line in lines)


def test_vectors_print_as_the_shortest_decimals_of_their_float32_values(
    monkeypatch: pytest.MonkeyPatch, fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(FakeClient, "embed", lambda self, texts, **_: np.full((1, 2), 0.1, dtype=np.float32))
    assert client_cli.main(["embed", "x"], environ={}) == 0
    assert capsys.readouterr().out == '{"text":"x","embedding":[0.1,0.1]}\n'


def test_embed_json_is_one_indented_array(fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    assert client_cli.main(["embed", "a", "bb", "--format", "json"], environ={}) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == [{"text": "a", "embedding": [1.0, 0.5]}, {"text": "bb", "embedding": [2.0, 0.5]}]
    assert out.startswith("[\n  {")


def test_embed_npy_is_the_vectors_as_numpy_loads_them(
    fake_client: type[FakeClient], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert client_cli.main(["embed", "a", "bb", "--format", "npy"], environ={}) == 0
    vectors = np.load(io.BytesIO(capsysbinary.readouterr().out))
    assert vectors.dtype == np.float32
    assert vectors.tolist() == [[1.0, 0.5], [2.0, 0.5]]


def test_npy_to_a_terminal_is_refused(
    fake_client: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert client_cli.main(["embed", "a", "--format", "npy"], environ={}) == 2
    assert "--format npy is binary: redirect it to a file" in capsys.readouterr().err
    assert fake_client.calls == []


def test_inputs_come_from_arguments_stdin_and_a_file_one_per_line(
    tmp_path: Path,
    fake_client: type[FakeClient],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n\nsecond line\n"))
    texts = tmp_path / "texts.txt"
    texts.write_text("from the file\n   \nlast\n", encoding="utf-8")
    assert client_cli.main(["embed", "first", "-", "--file", str(texts)], environ={}) == 0
    assert fake_client.calls == [["first", "from stdin", "second line", "from the file", "last"]]
    printed = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert printed == fake_client.calls[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed"], "bertmesh embed: no inputs: give TEXT arguments, - to read lines from stdin, or --file PATH"),
        (["classify", "--file", "/nonexistent/texts.txt"], "bertmesh classify: cannot read /nonexistent/texts.txt:"),
    ],
)
def test_no_inputs_or_an_unreadable_file_is_a_usage_error(
    argv: list[str], message: str, fake_client: type[FakeClient], capsys: pytest.CaptureFixture[str]
) -> None:
    assert client_cli.main(argv, environ={}) == 2
    assert capsys.readouterr().err.startswith(message)
    assert fake_client.calls == []


def test_more_inputs_than_the_server_takes_go_in_several_requests_in_order(
    fake_client: type[FakeClient], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    fake_client.max_inputs = 2
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    assert client_cli.main(["embed", *texts], environ={}) == 0
    assert fake_client.calls == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    lines = capsysbinary.readouterr().out.decode().splitlines()
    assert [json.loads(line)["embedding"][0] for line in lines] == [1, 2, 3, 4, 5]
    fake_client.calls = []
    assert client_cli.main(["embed", *texts, "--format", "npy"], environ={}) == 0
    assert len(fake_client.calls) == 3
    assert np.load(io.BytesIO(capsysbinary.readouterr().out))[:, 0].tolist() == [1, 2, 3, 4, 5]


def test_progress_shows_on_a_terminal_while_the_results_go_to_a_pipe(
    fake_client: type[FakeClient], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_client.max_inputs = 2
    texts = ["a", "bb", "ccc"]
    assert client_cli.main(["embed", *texts], environ={}) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert client_cli.main(["embed", *texts], environ={}) == 0
    assert capsys.readouterr().err == "\rbertmesh embed: 2/3 inputs\rbertmesh embed: 3/3 inputs\n"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert client_cli.main(["embed", *texts], environ={}) == 0
    assert capsys.readouterr().err == ""
