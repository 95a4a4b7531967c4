"""An HTTP server run as a child process in its own process group, for benchmarks.

``ServerProcess`` starts a command (our ``python -m executor serve`` or vLLM's OpenAI server)
with ``start_new_session=True``, so the server and every process it spawns (workers, engine
cores, a forkserver) share one process group that can be signalled at once. Its output goes
to a log file whose tail is shown when the server fails to come up. ``stop`` sends SIGTERM to
the group, waits, then SIGKILLs whatever is left, including descendants that moved to
another group, and checks that nothing is left: a benchmark leaves no orphans, even when it
is interrupted (use it as a context manager).

Ports: the port is picked when the server starts (the ``PORT`` placeholder in the command),
not when the object is made, and a server counts as ready only when the socket listening on
that port belongs to it. On a machine where other servers come and go, a port picked early
can be taken by another server before ours binds it, and that server's /health would answer.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 40
POLL_INTERVAL_S = 0.05
STOP_GRACE_S = 20.0  # SIGTERM -> SIGKILL: long enough for vLLM to shut its engine down
PORT = "{port}"  # in a command: replaced by the port picked at start
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class _Proc:
    parent: int
    group: int
    start_ticks: int  # with the pid, names one process even if the pid is reused later


def _proc(pid: int) -> _Proc | None:
    """``pid``'s entry in /proc, or None if it is gone (or a zombie, dead already)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # After the command name (which may hold spaces and ")"): state ppid pgrp ... field 22
    # (starttime) is the 20th after the name.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return _Proc(int(fields[1]), int(fields[2]), int(fields[19]))


def _all_procs() -> dict[int, _Proc]:
    procs = {}
    root = Path("/proc")
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name.isdigit():
            proc = _proc(int(entry.name))
            if proc is not None:
                procs[int(entry.name)] = proc
    return procs


def process_tree(root_pid: int) -> dict[int, int]:
    """{pid: start ticks} of the live processes in ``root_pid``'s process group or descended
    from it (Linux /proc; empty elsewhere, where only the group signal is used)."""
    procs = _all_procs()
    members = {pid for pid, p in procs.items() if p.group == root_pid}
    if root_pid in procs:
        members.add(root_pid)
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.parent, []).append(pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    return {pid: procs[pid].start_ticks for pid in members}


def _alive(pid: int, start_ticks: int) -> bool:
    proc = _proc(pid)
    return proc is not None and proc.start_ticks == start_ticks


def _signal_all(tree: dict[int, int], group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid, start_ticks in tree.items():
        if _alive(pid, start_ticks):  # never signal a stranger that reused a dead pid
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP ``port`` (None where /proc/net is not there)."""
    inodes: set[str] = set()
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            cols = line.split()  # sl local_address rem_address st ... uid timeout inode
            if cols[3] == TCP_LISTEN and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes if found_table else None


def owns_port(tree: dict[int, int], port: int) -> bool:
    """Whether a process of ``tree`` holds the socket listening on ``port``."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return True  # cannot tell here; the health check alone decides
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in tree:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    return True
            except OSError:
                continue
    return False


@dataclass
class ServerProcess:
    """One server command; ``url`` is where it answers once ``wait_ready`` returns."""

    name: str  # for messages: "ours", "vLLM"
    command: list[str]  # with PORT where the port goes
    log_path: Path  # "{port}" in its name is replaced too
    env: dict[str, str] | None = None
    cwd: Path | None = None
    health_path: str = "/health"
    scratch_dirs: list[Path] = field(default_factory=list)  # removed once stopped
    port: int = field(default=0, init=False)  # picked by start
    process: subprocess.Popen | None = field(default=None, init=False)
    started_at_s: float = field(default=0.0, init=False)  # time.perf_counter() at start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        self.port = free_port()
        self.command = [arg.replace(PORT, str(self.port)) for arg in self.command]
        self.log_path = self.log_path.with_name(self.log_path.name.replace(PORT, str(self.port)))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.started_at_s = time.perf_counter()
        try:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env,
                                            cwd=self.cwd, start_new_session=True)
        finally:
            log.close()  # the child holds its own descriptor
        return self

    def wait_ready(self, timeout_s: float) -> float:
        """Block until ``health_path`` answers 200; returns seconds since ``start``."""
        assert self.process is not None, "start() first"
        deadline = time.perf_counter() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(f"{self.name} server exited with code {code} before it "
                                       f"was ready ({' '.join(self.command)}); last lines of "
                                       f"{self.log_path}:\n{log_tail(self.log_path)}")
            if self._healthy() and owns_port(process_tree(self.process.pid), self.port):
                return time.perf_counter() - self.started_at_s
            if time.perf_counter() > deadline:
                raise ServerStartError(f"{self.name} server was not ready within {timeout_s:.0f} "
                                       f"s; last lines of {self.log_path}:\n"
                                       f"{log_tail(self.log_path)}")
            time.sleep(POLL_INTERVAL_S)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=2.0) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, grace_s: float = STOP_GRACE_S) -> float:
        """SIGTERM the group, SIGKILL what is left after ``grace_s``; returns the seconds
        until no process of the server was left. Raises if one survives SIGKILL."""
        if self.process is None:
            self._remove_scratch()
            return 0.0
        begin = time.perf_counter()
        group = self.process.pid
        tree = process_tree(group)
        _signal_all(tree, group, signal.SIGTERM)
        if not self._wait_gone(group, tree, grace_s):
            _signal_all(tree, group, signal.SIGKILL)
            if not self._wait_gone(group, tree, 10.0):
                left = sorted(pid for pid, ticks in tree.items() if _alive(pid, ticks))
                raise RuntimeError(f"{self.name} server: processes {left} survived SIGKILL")
        self.process = None
        stop_s = time.perf_counter() - begin
        self._remove_scratch()
        return stop_s

    def _remove_scratch(self) -> None:
        for scratch in self.scratch_dirs:
            shutil.rmtree(scratch, ignore_errors=True)

    def _wait_gone(self, group: int, tree: dict[int, int], timeout_s: float) -> bool:
        """Wait until every process of ``tree`` (grown with any new member) has exited."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            self.process.poll()  # reap the leader so it does not linger as a zombie
            tree.update(process_tree(group))
            if not any(_alive(pid, ticks) for pid, ticks in tree.items()):
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
