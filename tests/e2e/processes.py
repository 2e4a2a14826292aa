"""Processes the e2e harness starts: each in its own process group, logged to a file, stopped only by us."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class ProcessExitedError(RuntimeError):
    """A process the harness started exited while it was expected to run; the message holds its log's tail."""


_ports_given: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out.

    The kernel picks it; remembering what was handed out keeps two components started back to back (etcd's
    client and peer ports, say) from being given the same port before either binds it.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file (empty when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGKILL it when pytest dies, even by SIGKILL (Linux only).

    Teardown stops processes in order; this covers a killed test run, which would otherwise leave an
    apiserver and etcd running on the shared machine.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """A long-running binary started by the harness, with stdout and stderr in one log file."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            # A session of its own: stop() signals the whole group (children included) and nothing else, and
            # a Ctrl-C in the terminal reaches pytest, which then tears down in order.
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        """The process id (also its process-group id)."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.popen.poll() is None

    def check_running(self) -> None:
        """Raise ProcessExitedError with the log's tail when the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise ProcessExitedError(
                f"{self.name} exited with status {code}; log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; idempotent."""
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=grace)
        # The leader is gone; children it left in the group still die with it.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    watch: Sequence[ManagedProcess] = (),
) -> T:
    """Poll `probe` until it returns something other than None or False, and return that.

    Raises TimeoutError naming `what` (and the probe's last exception) after `timeout` seconds, or
    ProcessExitedError at once when one of the `watch` processes exits.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        for proc in watch:
            proc.check_running()
        try:
            result = probe()
        except Exception as exc:  # a probe fails until the thing it waits for is up
            last_error = exc
        else:
            if result is not None and result is not False:
                return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class CommandError(subprocess.CalledProcessError):
    """A command the harness ran failed; str() includes its stderr (and stdout), which say why."""

    def __str__(self) -> str:
        out = "\n".join(s.strip() for s in (self.stderr, self.output) if isinstance(s, str) and s.strip())
        return f"{' '.join(map(str, self.cmd))} exited with status {self.returncode}:\n{out}"


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    stdin: str | None = None,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion (`stdin` fed to it), capturing text; CommandError if check fails."""
    proc = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def http_ok(url: str, *, token: str | None = None, cafile: Path | None = None, insecure: bool = False) -> bool:
    """Whether GET url answers 200; connection errors propagate (callers poll with wait_until).

    `cafile` verifies a self-signed server; `insecure` skips verification (a component's /healthz, where only
    liveness matters).
    """
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = None
    if cafile is not None:
        context = ssl.create_default_context(cafile=str(cafile))
    elif insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return bool(response.status == 200)
