"""The sockets of a Raft node (raft/node.py): the public listener, bound at once to the
address given (handed to the tunnel), and pysyncobj's private side, which never faces the
network: its listener is an AF_UNIX socket in a fresh 0700 directory that accepts only this
very process, and each outgoing connection is a socketpair whose other end the tunnel
(raft/tunnel.py) carries to the peer."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import struct
import tempfile
from typing import Any, Callable

from pysyncobj import SyncObjConf
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.node import TCPNode
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from .tunnel import RaftTunnel

log = logging.getLogger("kolk.raft")


class RaftListenError(Exception):
    """This node cannot listen on its Raft address: the port is taken, or the address is not
    one of this host's. The operator's to fix (another port or address); retrying will not help.
    Nothing was written to the data directory."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot listen for raft on {address}: {reason}")
        self.address = address
        self.reason = reason


LISTEN_BACKLOG = 16


def _listen(address: str) -> socket.socket:
    """A non-blocking socket listening on ``address`` (host:port); RaftListenError if not."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise RaftListenError(address, "it is not host:port")
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise RaftListenError(address, (e.strerror or str(e)).lower()) from None
    try:
        # As pysyncobj's TcpServer: SO_REUSEADDR lets a restarted node bind while its old
        # connections linger in TIME_WAIT; a port another socket listens on is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise RaftListenError(address, (e.strerror or str(e)).lower()) from None
    return sock


# AF_UNIX paths are at most 107 bytes: a short private directory under /tmp, not the data dir.
LOCAL_DIR_PARENT = "/tmp"
LOCAL_SOCKET_NAME = "raft.sock"


LOCAL_DIR_PREFIX = "kolk-raft-"  # then the owning process's pid, "-", a random part
STALE_SWEEP_MAX = 10_000  # entries of LOCAL_DIR_PARENT looked at for stale directories


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _sweep_stale_local() -> int:
    """Remove the private directories of this user's SCs that died without stopping (kill -9
    cannot clean up): a directory is stale when the pid in its name is not running. A live
    pid, another user's directory, or anything unexpected is left alone. Returns how many."""
    removed = 0
    try:
        with os.scandir(LOCAL_DIR_PARENT) as entries:
            for i, entry in enumerate(entries):
                if i >= STALE_SWEEP_MAX:
                    break
                pid_text = entry.name[len(LOCAL_DIR_PREFIX):].split("-", 1)[0]
                if not entry.name.startswith(LOCAL_DIR_PREFIX) or not pid_text.isdigit():
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid()
                        or _pid_alive(int(pid_text))):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    except OSError:
        return removed
    return removed


def _listen_local() -> tuple[socket.socket, str]:
    """pysyncobj's listener: an AF_UNIX socket in a fresh 0700 directory named after this
    process (removed at stop; after a kill -9, by the next node started on this host)."""
    _sweep_stale_local()
    directory = tempfile.mkdtemp(prefix=f"{LOCAL_DIR_PREFIX}{os.getpid()}-", dir=LOCAL_DIR_PARENT)  # mode 0700
    path = os.path.join(directory, LOCAL_SOCKET_NAME)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return sock, path


def _remove_local(path: str) -> None:
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _from_this_process(conn: socket.socket) -> bool:
    """Whether the other end of an AF_UNIX connection is this process (where SO_PEERCRED exists)."""
    if conn.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return conn.family == socket.AF_UNIX
    pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return pid == os.getpid()


class _ListeningServer:
    """pysyncobj's TcpServer on a socket that is already listening (see RaftNode.__init__).

    TCPTransport calls ``bind()`` from its tick thread to start accepting (it can no longer
    fail) and ``unbind()`` when it is destroyed. Accepted connections are set up as
    TcpServer sets them up."""

    def __init__(self, sock: socket.socket, poller: Any, on_new_connection: Callable[[Any], None],
                 conf: SyncObjConf) -> None:
        self._sock: socket.socket | None = sock
        self._poller = poller
        self._on_new_connection = on_new_connection
        self._conf = conf
        self._fileno: int | None = None

    def bind(self) -> None:
        if self._sock is None:
            raise RuntimeError("the Raft listener was closed")
        self._fileno = self._sock.fileno()
        self._poller.subscribe(self._fileno, self._on_event, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self) -> None:
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _on_event(self, _descr: int, event: int) -> None:
        if self._sock is None:
            return
        if event & POLL_EVENT_TYPE.READ:
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing to accept after all, or the client gave up first
            except OSError as e:
                # TcpServer stops listening here too; say so instead of going quiet.
                log.error("the Raft listener stopped: accepting a connection failed: %s", e)
                self.unbind()
                return
            if not _from_this_process(conn):
                log.warning("raft: refused a local connection to pysyncobj's socket from another process")
                conn.close()
                return
            c = self._conf
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, c.sendBufferSize)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, c.recvBufferSize)
            conn.setblocking(False)
            self._on_new_connection(TcpConnection(poller=self._poller, socket=conn, timeout=c.connectionTimeout,
                                                  sendBufferSize=c.sendBufferSize,
                                                  recvBufferSize=c.recvBufferSize))
        if event & POLL_EVENT_TYPE.ERROR:
            log.error("the Raft listener stopped: its socket reported an error")
            self.unbind()


class _TunnelConnection(TcpConnection):
    """pysyncobj's outgoing connection to ``node``, through the tunnel: ``connect`` makes a
    socketpair, keeps one end (pysyncobj then runs it as it runs a TCP socket) and hands the
    other to the tunnel, which connects to the peer's public Raft address."""

    def __init__(self, tunnel: RaftTunnel, node: TCPNode, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tunnel = tunnel
        self._node = node

    def connect(self, host, port):  # noqa: ANN001, ANN201 - pysyncobj's signature
        if host is None:  # pysyncobj could not resolve the peer's name
            return False
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (mine, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpConnection__sendBufferSize)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpConnection__recvBufferSize)
        mine.setblocking(False)
        # What TcpConnection.connect sets up, on our end of the pair.
        self._TcpConnection__socket = mine
        self._TcpConnection__readBuffer = bytes()
        self._TcpConnection__writeBuffer = bytes()
        self._TcpConnection__lastReadTime = _monotonic()
        self._TcpConnection__fileno = mine.fileno()
        self._TcpConnection__state = CONNECTION_STATE.CONNECTING
        self._TcpConnection__poller.subscribe(self._TcpConnection__fileno, self._TcpConnection__processConnection,
                                              POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        # The public host (not the resolved IP): a TLS peer's certificate names it.
        self._tunnel.forward(theirs, self._node.host, self._node.port)
        return True
