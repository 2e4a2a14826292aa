"""Server subprocesses: start with a log file, wait until ready, account CPU of the whole process tree, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int, tid: int | None = None) -> tuple[int, float] | None:
    """(parent pid, utime + stime seconds) of a live process, or of its thread `tid`; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """utime + stime seconds of one live thread of a process."""
    info = _stat(pid, tid)
    if info is None:
        raise ProcessLookupError(f"thread {tid} of process {pid} is gone")
    return info[1]


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores together (/proc/stat).

    Busy counts everyone: this benchmark, its servers and whatever else runs here (other engineers' builds).
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / _TICKS, steal / _TICKS


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by `root` and every live descendant (threads included)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                parents[int(entry)], cpu[int(entry)] = info
    total, frontier = 0.0, [root]
    seen: set[int] = set()
    while frontier:
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += cpu.get(pid, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


class ServerProcess:
    """One server started in its own process group, output to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        env: dict[str, str],
        cwd: Path,
        cpus: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        pinned = f" on CPUs {','.join(map(str, cpus))}" if cpus else ""
        print(f"bench: starting {name}{pinned}: {' '.join(argv)}", flush=True)
        # The affinity is set before exec, so every process and thread the server starts inherits it.
        cpu_set = set(cpus)
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpu_set)) if cpu_set else None,
        )

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU seconds of the server's process tree so far."""
        return tree_cpu_seconds(self.proc.pid)

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Polls `ready` until it is true; raises with the log's tail when the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if ready():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        self._log.flush()
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT then SIGTERM to the process group (pytriton stops cleanly on SIGINT), SIGKILL as a last resort."""
        if self.proc.poll() is None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout / 2)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
