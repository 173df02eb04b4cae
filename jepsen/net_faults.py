"""Link faults of the fault harness in netns mode, as pure plans (DESIGN.md §9, issue 22).

In netns mode every node is a host of its own (a network namespace on a bridge,
jepsen/netns.py), so a link fault is what Jepsen does on real clusters: packets dropped between
*pairs* of hosts (nftables), or a queueing discipline on one host (netem: delay, jitter, loss,
duplication, reordering). This module only decides *what* to cut or shape; the system
(jepsen/netns_system.py) carries it out.

An edge ``(a, b)`` means "packets from host a to host b are dropped"; a two-way cut is both
edges. Clients run in the root namespace and are never cut by an edge: with per-pair filters a
partition separates nodes, and clients still reach every node (stale leaders included), as the
proxy mode's node-link cuts do.

:class:`EdgeCounts` counts how many active faults hold each edge, so that healing one fault
never heals a link that another still cuts (two partition-one faults on spu-1 and sc-2 both cut
the pair spu-1/sc-2).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from .netns import Netem  # one host's egress shape, as Network.netem takes it

Edge = tuple[str, str]

# netem shapes, bounded: the harness must slow the cluster down, not stop it.
SLOW_DELAY_MS_MAX = 1000
LOSSY_LOSS_PCT = (5.0, 30.0)  # loss of a lossy window, drawn from the fault's seed
NETEM_DELAY_MS = (20, 250)
NETEM_LOSS_PCT = (0.0, 1.0, 5.0, 10.0)
NETEM_DUPLICATE_PCT = (0.0, 1.0, 5.0)
NETEM_REORDER_PCT = (0.0, 10.0, 25.0)


@dataclass(frozen=True)
class NetPlan:
    """What one fault does to the network: edges to drop, and a netem shape per host."""

    edges: frozenset[Edge] = frozenset()
    netem: dict[str, Netem] = field(default_factory=dict, hash=False)
    note: str = ""

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"edges": sorted(f"{a}->{b}" for a, b in self.edges)}
        if self.netem:
            out["netem"] = {n: asdict(s) for n, s in sorted(self.netem.items())}
        if self.note:
            out["note"] = self.note
        return out


def both(a: str, b: str) -> set[Edge]:
    return {(a, b), (b, a)}


def between(side_a: Iterable[str], side_b: Iterable[str]) -> frozenset[Edge]:
    """Every edge, both ways, between two sides (nodes within one side still reach each other)."""
    b = list(side_b)
    return frozenset(e for x in side_a for y in b if x != y for e in both(x, y))


def bridge_halves(bridge: str, nodes: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    """Jepsen's bridge: the nodes but ``bridge`` split in two halves (sizes differ by at most
    one, drawn from ``rng``); the bridge node is in both, so both halves reach it."""
    rest = sorted(n for n in nodes if n != bridge)
    rng.shuffle(rest)
    k = len(rest) // 2
    return sorted(rest[:k]), sorted(rest[k:])


def netem_params(rng: random.Random) -> dict[str, Any]:
    """The schedule's parameters of a ``netem`` fault (pure, from the schedule's rng)."""
    delay = rng.randint(*NETEM_DELAY_MS)
    return {"delay_ms": delay, "jitter_ms": rng.randint(0, delay // 2), "loss_pct": rng.choice(NETEM_LOSS_PCT),
            "duplicate_pct": rng.choice(NETEM_DUPLICATE_PCT), "reorder_pct": rng.choice(NETEM_REORDER_PCT)}


def plan(kind: str, nodes: list[str], all_nodes: list[str], params: dict[str, Any], rng: random.Random) -> NetPlan:
    """The network part of a link fault in netns mode.

    ``nodes`` are the fault's resolved nodes (for partition-half: the minority; for
    partition-pair: the two nodes; for bridge: the bridge node); ``all_nodes`` every node of the
    cluster; ``rng`` is seeded by the fault's ``params["seed"]``."""
    others = [n for n in all_nodes if n not in nodes]
    if kind == "partition-one":
        note = "clients still reach it (per-pair filters cut node links only)" if params.get("clients") else ""
        return NetPlan(between(nodes, others), note=note)
    if kind == "partition-half":
        return NetPlan(between(nodes, others))
    if kind == "partition-pair":
        if len(nodes) != 2 or nodes[0] == nodes[1]:
            raise ValueError(f"partition-pair needs two different nodes, got {nodes}")
        return NetPlan(frozenset(both(nodes[0], nodes[1])))
    if kind == "partition-oneway":
        d = params.get("direction", "out")
        if d not in ("in", "out"):
            raise ValueError(f"partition-oneway direction must be 'in' or 'out', got {d!r}")
        return NetPlan(frozenset((n, o) if d == "out" else (o, n) for n in nodes for o in others))
    if kind == "bridge":
        if len(nodes) != 1:
            raise ValueError(f"bridge needs one bridge node, got {nodes}")
        a, b = bridge_halves(nodes[0], all_nodes, rng)
        return NetPlan(between(a, b), note=f"halves {a} and {b} both reach {nodes[0]}")
    if kind == "slow":
        delay = min(SLOW_DELAY_MS_MAX, int(round(float(params.get("delay_s", 0.1)) * 1000)))
        return NetPlan(netem={n: Netem(delay_ms=delay) for n in nodes})
    if kind == "lossy":
        loss = round(rng.uniform(*LOSSY_LOSS_PCT), 1)
        return NetPlan(netem={n: Netem(loss_pct=loss) for n in nodes})
    if kind == "netem":
        shape = Netem(**{k: params[k] for k in Netem.__dataclass_fields__ if k in params})
        shape.validate()
        return NetPlan(netem={n: shape for n in nodes})
    raise ValueError(f"{kind!r} is not a link fault")


class EdgeCounts:
    """How many active faults cut each edge. ``add`` returns the edges that became cut (to
    drop now); ``remove`` those that no fault cuts any more (to heal now)."""

    def __init__(self) -> None:
        self._n: dict[Edge, int] = {}

    def add(self, edges: Iterable[Edge]) -> list[Edge]:
        new = []
        for e in sorted(set(edges)):
            self._n[e] = self._n.get(e, 0) + 1
            if self._n[e] == 1:
                new.append(e)
        return new

    def remove(self, edges: Iterable[Edge]) -> list[Edge]:
        gone = []
        for e in sorted(set(edges)):
            left = self._n.get(e, 0) - 1
            if left <= 0:
                self._n.pop(e, None)
                if left == 0:
                    gone.append(e)
            else:
                self._n[e] = left
        return gone

    def cut(self) -> frozenset[Edge]:
        return frozenset(self._n)

    def clear(self) -> list[Edge]:
        gone = sorted(self._n)
        self._n.clear()
        return gone
