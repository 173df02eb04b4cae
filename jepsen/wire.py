"""A userspace netem: relay a host's Ethernet frames between two interfaces, delaying,
losing, duplicating and reordering the frames the host sends (``python -m jepsen.wire``).

For kernels without ``sch_netem``. jepsen/netns.py detaches the host's bridge-side veth
(``--host-if``) from the bridge and puts a veth pair in its place whose free end is
``--net-if``; this process moves every frame between the two through AF_PACKET sockets. Frames
from the host (its egress) get the fault; frames to the host pass at once, as ``tc netem`` on
the host's eth0 would do.

Sockets use ``PACKET_VNET_HDR``: every frame comes with its virtio-net header (GSO size and
checksum state) and goes out with it, so veth's large offloaded segments and half-done
checksums cross the relay as they are.

Limits: at most ``QUEUED_FRAMES_MAX`` frames and ``QUEUED_BYTES_MAX`` bytes wait; a frame over
either is dropped and counted (``overflow``). Counters go to ``--stats-file`` (one line of
``key=value``) at most every ``STATS_INTERVAL_S`` and on exit. SIGTERM stops it.

The planning is pure (``plan_frame``): a frame and the dice in, the times to send it out.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4  # pkttype of a frame this host sent on the interface (our own sends)
FRAME_BYTES_MAX = 65536 + 64
QUEUED_FRAMES_MAX = 20_000
QUEUED_BYTES_MAX = 64 * 1024 * 1024
STATS_INTERVAL_S = 0.5
READS_PER_WAKE_MAX = 256


@dataclass(frozen=True)
class Faults:
    delay_ms: int = 0
    jitter_ms: int = 0
    loss_pct: float = 0.0
    duplicate_pct: float = 0.0
    reorder_pct: float = 0.0


def plan_frame(f: Faults, now: float, dice: "random.Random") -> list[float]:
    """When to send one frame the host sent: [] (lost), one time, or two (duplicated).

    As netem: a reordered frame goes at once while the others wait their delay; jitter is
    uniform within +-jitter_ms."""
    if f.loss_pct and dice.random() * 100 < f.loss_pct:
        return []
    copies = 2 if f.duplicate_pct and dice.random() * 100 < f.duplicate_pct else 1
    out = []
    for _ in range(copies):
        if f.reorder_pct and dice.random() * 100 < f.reorder_pct:
            out.append(now)
            continue
        d = f.delay_ms + (dice.uniform(-f.jitter_ms, f.jitter_ms) if f.jitter_ms else 0.0)
        out.append(now + max(0.0, d) / 1000.0)
    return out


def _socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


class Relay:
    def __init__(self, host_if: str, net_if: str, faults: Faults, stats_file: str | None) -> None:
        self.host = _socket(host_if)
        self.net = _socket(net_if)
        self.faults = faults
        self.stats_file = stats_file
        self.dice = random.Random()
        self.queue: list[tuple[float, int, bytes]] = []
        self.queued_bytes = 0
        self.seq = 0
        self.counts = {"from_host": 0, "to_host": 0, "sent": 0, "lost": 0, "duplicated": 0,
                       "overflow": 0, "send_errors": 0}
        self.stopping = False

    def _read(self, s: socket.socket) -> list[bytes]:
        frames = []
        for _ in range(READS_PER_WAKE_MAX):
            try:
                data, addr = s.recvfrom(FRAME_BYTES_MAX)
            except BlockingIOError:
                break
            if addr[2] != PACKET_OUTGOING:
                frames.append(data)
        return frames

    def _send(self, s: socket.socket, frame: bytes) -> None:
        try:
            s.send(frame)
        except OSError:
            self.counts["send_errors"] += 1  # e.g. ENOBUFS; a real wire loses it too

    def step(self, timeout: float) -> None:
        readable, _, _ = select.select([self.host, self.net], [], [], timeout)
        now = time.monotonic()
        if self.net in readable:
            for frame in self._read(self.net):
                self.counts["to_host"] += 1
                self._send(self.host, frame)
        if self.host in readable:
            for frame in self._read(self.host):
                self.counts["from_host"] += 1
                times = plan_frame(self.faults, now, self.dice)
                if not times:
                    self.counts["lost"] += 1
                if len(times) > 1:
                    self.counts["duplicated"] += 1
                for t in times:
                    if len(self.queue) >= QUEUED_FRAMES_MAX or self.queued_bytes + len(frame) > QUEUED_BYTES_MAX:
                        self.counts["overflow"] += 1
                        continue
                    self.seq += 1
                    heapq.heappush(self.queue, (t, self.seq, frame))
                    self.queued_bytes += len(frame)
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, _, frame = heapq.heappop(self.queue)
            self.queued_bytes -= len(frame)
            self.counts["sent"] += 1
            self._send(self.net, frame)

    def write_stats(self) -> None:
        if not self.stats_file:
            return
        tmp = self.stats_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(" ".join(f"{k}={v}" for k, v in self.counts.items()) + f" queued={len(self.queue)}\n")
        os.replace(tmp, self.stats_file)

    def run(self) -> None:
        last_stats = 0.0
        while not self.stopping:
            wait = STATS_INTERVAL_S
            if self.queue:
                wait = min(wait, max(0.0, self.queue[0][0] - time.monotonic()))
            self.step(wait)
            if time.monotonic() - last_stats >= STATS_INTERVAL_S:
                self.write_stats()
                last_stats = time.monotonic()
        self.write_stats()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jepsen.wire", description=__doc__.splitlines()[0])
    p.add_argument("--host-if", required=True)
    p.add_argument("--net-if", required=True)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--jitter-ms", type=int, default=0)
    p.add_argument("--loss-pct", type=float, default=0.0)
    p.add_argument("--duplicate-pct", type=float, default=0.0)
    p.add_argument("--reorder-pct", type=float, default=0.0)
    p.add_argument("--stats-file")
    p.add_argument("--ready-file")
    a = p.parse_args(argv)
    relay = Relay(a.host_if, a.net_if, Faults(a.delay_ms, a.jitter_ms, a.loss_pct, a.duplicate_pct, a.reorder_pct),
                  a.stats_file)

    def stop(_sig: int, _frame: object) -> None:
        relay.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if a.ready_file:
        with open(a.ready_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
