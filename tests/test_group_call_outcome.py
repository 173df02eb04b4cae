"""A group call retried after an attempt whose outcome is unknown (core/client/coordinator.py).

Found by the fault harness's group workload (docs/reliability.md, "Consumer groups"): a member
frozen right after sending a commit woke up, its call timed out before the answer was read, the
retry was refused with staleMember (the member had been removed meanwhile), and the application
was told "refused" although the first attempt had been applied. A refusal after such an attempt
must say that the outcome is unknown; a refusal of a first attempt stays definite. The
connection here is a stand-in for one SPU's answers, not a server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from kolk.client.coordinator import group_call
from kolk.protocol.channel import ConnectionLost
from kolk.protocol.errors import StaleMemberError

STALE = SimpleNamespace(result=SimpleNamespace(ok=False, error=SimpleNamespace(
    code="staleMember", message="member m is not in group g (removed or left): its commit is refused",
    leader="", retriable=False, outcomeUnknown=False)))


class _Conn:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0

    async def call(self, method: str, timeout: float, **fields: Any) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class _Client:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        return [{}] * 8

    async def leader_spu(self, topic: str, partition: int) -> tuple[Any, str]:
        return self.conn, "127.0.0.1:1"

    def forget_leaders(self, topic: str) -> None:
        pass

    def drop_connection(self, address: str | None) -> None:
        pass


def _commit(conn: _Conn, method: str = "offsetCommit") -> None:
    asyncio.run(group_call(_Client(conn), "g", method, {"group": "g"}, deadline_s=5.0))  # type: ignore[arg-type]


@pytest.mark.parametrize("first", [TimeoutError(), ConnectionLost("reset", sent=True)])
def test_a_refusal_after_an_unanswered_commit_attempt_is_outcome_unknown(first: BaseException) -> None:
    conn = _Conn([first, STALE])
    with pytest.raises(StaleMemberError, match="an earlier attempt may have been applied") as e:
        _commit(conn)
    assert e.value.outcome_unknown and conn.calls == 2


def test_a_refusal_of_the_first_attempt_is_definite() -> None:
    with pytest.raises(StaleMemberError) as e:
        _commit(_Conn([STALE]))
    assert not e.value.outcome_unknown


def test_a_connection_refused_before_sending_leaves_the_refusal_definite() -> None:
    with pytest.raises(StaleMemberError) as e:
        _commit(_Conn([ConnectionLost("refused", sent=False), STALE]))
    assert not e.value.outcome_unknown


def test_a_heartbeat_is_not_a_write() -> None:
    with pytest.raises(StaleMemberError) as e:
        _commit(_Conn([TimeoutError(), STALE]), method="groupHeartbeat")
    assert not e.value.outcome_unknown
