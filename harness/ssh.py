"""SSH to guests: one persistent connection per guest, commands, streams, file transfer.

Built on fabric (which wraps paramiko): a Session holds one fabric Connection.
Commands go straight over its paramiko transport (a channel per command, no
polling sleeps, so a round trip costs what the guest costs); files go over SFTP;
``run_parallel`` runs one command on many guests with a fabric ThreadingGroup
over the same connections. The guest's host key is known from the image, so
unknown keys are rejected, never auto-added.
"""

from __future__ import annotations

import base64
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException

from harness.errors import CommandFailed, SSHError


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _host_key(line: str) -> paramiko.PKey:
    kind, b64 = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(b64))


class Session:
    """A persistent SSH connection to one guest on 127.0.0.1:port."""

    def __init__(self, name: str, port: int, key_file: Path, host_key: str,
                 connect_timeout: float = 15.0) -> None:
        self.name = name
        self.port = port
        self.conn = Connection(
            "127.0.0.1", user="root", port=port,
            config=Config(overrides={"load_ssh_configs": False}),
            connect_timeout=connect_timeout,
            connect_kwargs={"key_filename": [str(key_file)], "look_for_keys": False,
                            "allow_agent": False, "banner_timeout": connect_timeout,
                            "auth_timeout": connect_timeout},
        )
        client = self.conn.client
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.split()[0],
                                   _host_key(host_key))
        try:
            self.conn.open()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(f"{name}: cannot connect over SSH to 127.0.0.1:{port}: {exc}") from exc
        # Without this, Nagle's algorithm meets the peer's delayed ACK on every small
        # request (channel open, exec): ~40 ms per command instead of ~10 ms.
        self._transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _transport(self) -> paramiko.Transport:
        t = self.conn.client.get_transport()
        if t is None or not t.is_active():
            raise SSHError(f"{self.name}: the SSH connection is closed")
        return t

    def run(self, command: str, *, timeout: float = 60.0, check: bool = False,
            on_stdout: Callable[[str], None] | None = None,
            on_stderr: Callable[[str], None] | None = None,
            stdin: bytes | None = None) -> CommandResult:
        """Run ``command`` in the guest's shell; stream lines to the callbacks if given."""
        start = time.monotonic()
        deadline = start + timeout
        try:
            chan = self._transport().open_session(timeout=min(timeout, 15.0))
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            out, err = self._collect(chan, deadline, on_stdout, on_stderr, command)
            code = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(f"{self.name}: '{command}' failed over SSH: {exc}") from exc
        res = CommandResult(self.name, command, code, out, err, time.monotonic() - start)
        if check and code != 0:
            raise CommandFailed(command, code, out, err, self.name)
        return res

    def _collect(self, chan: paramiko.Channel, deadline: float,
                 on_out: Callable[[str], None] | None, on_err: Callable[[str], None] | None,
                 command: str) -> tuple[str, str]:
        bufs = {"out": bytearray(), "err": bytearray()}
        partial = {"out": b"", "err": b""}
        cbs = {"out": on_out, "err": on_err}

        def feed(kind: str, data: bytes) -> None:
            bufs[kind] += data
            cb = cbs[kind]
            if cb is None:
                return
            lines = (partial[kind] + data).split(b"\n")
            partial[kind] = lines.pop()
            for ln in lines:
                cb(ln.decode(errors="replace"))

        while True:
            if chan.recv_ready():
                feed("out", chan.recv(65536))
            elif chan.recv_stderr_ready():
                feed("err", chan.recv_stderr(65536))
            elif chan.exit_status_ready() and not chan.recv_ready() \
                    and not chan.recv_stderr_ready():
                break
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    chan.close()
                    raise SSHError(f"{self.name}: '{command}' did not finish in time")
                select.select([chan], [], [], min(left, 0.2))
        for kind, cb in cbs.items():
            if cb is not None and partial[kind]:
                cb(partial[kind].decode(errors="replace"))
        return bufs["out"].decode(errors="replace"), bufs["err"].decode(errors="replace")

    def put(self, local: Path | str, remote: str) -> None:
        try:
            self.conn.put(str(local), remote)
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"{self.name}: cannot copy {local} to {remote}: {exc}") from exc

    def get(self, remote: str, local: Path | str) -> None:
        try:
            self.conn.get(remote, str(local))
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"{self.name}: cannot fetch {remote} to {local}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()


def run_parallel(sessions: list[Session], command: str, timeout: float = 60.0
                 ) -> dict[str, CommandResult]:
    """Run ``command`` on every guest at once (fabric ThreadingGroup); results by guest."""
    by_conn = {id(s.conn): s.name for s in sessions}
    group = ThreadingGroup.from_connections([s.conn for s in sessions])
    start = time.monotonic()
    try:
        results = group.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
    except GroupException as exc:
        results = exc.result
    out: dict[str, CommandResult] = {}
    for conn, r in results.items():
        name = by_conn[id(conn)]
        if isinstance(r, Exception):
            raise SSHError(f"{name}: '{command}' failed: {r}")
        out[name] = CommandResult(name, command, r.exited, r.stdout, r.stderr,
                                  time.monotonic() - start)
    return out
