"""Memory budgets for SmartModule instances (DESIGN.md §8): one per SPU, one per chain inside it.

An instance holds what its linear memory is now (memory never shrinks while it lives), and
before each call borrows room to grow, up to its cap, from its chain's budget and the SPU's;
the store's memory limit is set to what it holds plus what it borrowed, so ``memory.grow`` past
it fails in the module. After the call it keeps what it grew to and gives the rest back. So
the memory instances really have never passes a budget, and a budget counts what is used,
not what might be: a filter that needs 1 MiB takes 1 MiB of it, not its 64 MiB cap.

A new instance must get its initial memory from both budgets at once, or the stream is refused
naming the budget that is spent (:class:`BudgetExceeded`). Room to grow is lent as far as the
budgets allow (a call on a full SPU may get less than its cap, and a module that needs more
fails its call with the budget named). Thread-safe: calls run on worker threads.
"""

from __future__ import annotations

import threading

from .sizes import size_text


class BudgetExceeded(Exception):
    """A reservation would pass a budget; the message names the budget and what asked.
    ``reason`` is the budget's (a SmartModuleError reason: memoryBudget, chainMemory)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class MemoryBudget:
    def __init__(self, total_bytes: int, name: str = "the SPU's SmartModule memory budget",
                 parent: "MemoryBudget | None" = None, hint: str = "", reason: str = "memoryBudget") -> None:
        if total_bytes < 1 << 20:
            raise ValueError("a SmartModule memory budget is at least 1 MiB")
        self.total = total_bytes
        self.reason = reason
        self.name = name
        self.parent = parent
        self.hint = hint
        self.used = 0
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return self.total - self.used

    def describe(self) -> str:
        return f"{self.name} of {size_text(self.total)} ({size_text(self.used)} in use)"

    def take(self, n: int, what: str) -> None:
        """Take exactly ``n`` from this budget and its parents, or raise BudgetExceeded
        naming the one that has not got it (and take nothing)."""
        with self._lock:
            if self.used + n > self.total:
                raise BudgetExceeded(f"{self.describe()} has not got the {size_text(n)} {what} needs{self.hint}",
                                     self.reason)
            self.used += n
        if self.parent is not None:
            try:
                self.parent.take(n, what)
            except BudgetExceeded:
                self._return(n)
                raise

    def take_up_to(self, n: int) -> int:
        """Take as much of ``n`` as this budget and its parents have free; how much."""
        with self._lock:
            got = max(0, min(n, self.total - self.used))
            self.used += got
        if self.parent is not None and got:
            from_parent = self.parent.take_up_to(got)
            if from_parent < got:
                self._return(got - from_parent)
                got = from_parent
        return got

    def give_back(self, n: int) -> None:
        self._return(n)
        if self.parent is not None:
            self.parent.give_back(n)

    def _return(self, n: int) -> None:
        with self._lock:
            self.used -= n


class InstanceMemory:
    """One instance's account with a budget: what it holds, and room lent for a call."""

    def __init__(self, budget: MemoryBudget, cap: int) -> None:
        self.budget = budget
        self.cap = cap
        self.held = 0
        self.lent = 0
        self.limit = 0
        self._closed = False

    def start(self, initial: int, what: str) -> int:
        """Take the instance's initial memory (or raise BudgetExceeded); its first limit."""
        self.budget.take(initial, what)
        self.held = initial
        return self.lend()

    def lend(self) -> int:
        """Borrow room to grow toward the cap for the next call; the store's memory limit."""
        assert self.lent == 0
        self.lent = self.budget.take_up_to(self.cap - self.held)
        self.limit = self.held + self.lent
        return self.limit

    def settle(self, size: int) -> None:
        """After a call: keep ``size`` (what the memory is now), give the rest back."""
        grown = max(0, size - self.held)
        extra = self.lent - grown
        self.held += grown
        self.lent = 0
        if extra > 0:
            self.budget.give_back(extra)

    @property
    def short(self) -> bool:
        """The last lending stopped below the cap: a budget, not the cap, bounded the call."""
        return self.limit < self.cap

    def release(self) -> None:
        if self._closed:
            return
        self._closed = True
        n, self.held, self.lent = self.held + self.lent, 0, 0
        if n:
            self.budget.give_back(n)
