"""`bertmesh embed|classify|info|...`: where the commands send, what they print, and how a failure reads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    FakeClient.targets, FakeClient.calls = [], []
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
