"""SmartModule memory is released deterministically and bounded by one budget (issue 18):
no instance, store or chain is left for a cycle collector the servers run without, a chain
closed while a worker runs it is freed when the call returns, and the budget refuses what
would pass it, naming itself."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from kolk.smartmodule.budget import BudgetExceeded, InstanceMemory, MemoryBudget
from kolk.smartmodule.chain import Chain, ChainError, Stage
from kolk.smartmodule.engine import SmartModuleError
from test_smartmodule_hostile import BATCH, GOOD, call, cache_for, wat, FAST

TRAPS = wat("unreachable")
SPINS = wat("(loop $l (br $l)) (i64.const 0)")


@pytest.fixture(autouse=True)
def no_cycle_collector():
    """As in the servers: whatever a test leaves in a cycle stays."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if was:
        gc.enable()


def test_a_failing_call_leaves_nothing_behind() -> None:
    inst = cache_for(FAST).load(TRAPS).instantiate()
    alive_inst, alive_store = weakref.ref(inst), weakref.ref(inst.store)
    with pytest.raises(SmartModuleError) as info:
        call(inst)
    assert info.value.reason == "trap"
    del inst, info
    assert alive_inst() is None and alive_store() is None


def test_a_call_out_of_fuel_leaves_nothing_behind() -> None:
    inst = cache_for(FAST).load(SPINS).instantiate()
    alive_store = weakref.ref(inst.store)
    with pytest.raises(SmartModuleError, match="ran out of fuel"):
        call(inst)
    del inst
    assert alive_store() is None


def test_a_failing_chain_leaves_nothing_behind() -> None:
    cache = cache_for(FAST)
    good, bad = cache.load(GOOD).instantiate(), cache.load(TRAPS).instantiate()
    stores = [weakref.ref(good.store), weakref.ref(bad.store)]
    chain = Chain([Stage("good@1", good), Stage("bad@1", bad)])
    del good, bad
    with pytest.raises(ChainError, match="SmartModule bad@1 \\(filter\\) failed"):
        chain.apply(BATCH, 1 << 20)
    del chain
    assert [s() for s in stores] == [None, None]


def _open_stores() -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "Store" and getattr(o, "_Managed__ptr", None))


@pytest.mark.parametrize("module", [wat(version="(i32.const 2)"), wat(extra="(func $s unreachable) (start $s)")],
                         ids=["abi-version-2", "start-traps"])
def test_a_failing_instantiation_leaves_nothing_behind(module: bytes) -> None:
    loaded = cache_for(FAST).load(module)
    before = _open_stores()
    with pytest.raises(SmartModuleError):
        loaded.instantiate()
    assert _open_stores() == before  # the failed instance closed its own store


def test_close_frees_the_store_at_once_and_calls_are_refused_after() -> None:
    inst = cache_for(FAST).load(GOOD).instantiate()
    store = inst.store
    chain = Chain([Stage("good@1", inst)], on_close=lambda: released.append(1))
    released: list[int] = []
    chain.close()
    chain.close()  # twice is fine
    assert inst.closed and released == [1]
    with pytest.raises(ValueError):
        store.get_fuel()  # wasmtime: the store is gone
    with pytest.raises(ChainError, match="closed"):
        chain.run(BATCH, 1 << 20)


def test_a_chain_closed_while_a_worker_runs_it_is_freed_when_the_call_returns() -> None:
    cache = cache_for(FAST)
    slow = cache.load(wat("(local $i i32) (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) "
                          "(br_if $l (i32.lt_u (local.get $i) (i32.const 100000)))) "
                          "(i32.store (i32.add (local.get $ptr) (i32.const 20)) (i32.load (local.get $ptr))) "
                          "(i64.or (i64.shl (i64.extend_i32_u (i32.add (local.get $ptr) (i32.const 20))) "
                          "(i64.const 32)) (i64.extend_i32_u (i32.sub (local.get $len) (i32.const 20))))"))
    released = threading.Event()
    chain = Chain([Stage("slow@1", slow.instantiate())], on_close=released.set)
    results: list[object] = []
    entered = threading.Event()
    original = chain._run

    def run_and_report(*a):  # noqa: ANN002
        entered.set()
        assert closed.wait(5)
        return original(*a)

    closed = threading.Event()
    chain._run = run_and_report  # type: ignore[method-assign]
    t = threading.Thread(target=lambda: results.append(chain.run(BATCH, 1 << 20)))
    t.start()
    assert entered.wait(5)
    chain.close()  # while the worker is inside: deferred
    assert not released.is_set() and not chain.stages[0].instance.closed
    closed.set()
    t.join(10)
    assert released.is_set() and chain.stages[0].instance.closed
    out, stopped = results[0]  # type: ignore[misc]
    assert stopped is None and out


def test_run_stops_between_batches_when_its_time_slice_ends() -> None:
    inst = cache_for(FAST).load(GOOD).instantiate()
    chain = Chain([Stage("good@1", inst)])
    data = BATCH * 5
    out, stopped = chain.run(data, 1 << 20, time_budget_s=0.0)  # at least one batch, then stop
    assert out and stopped == len(BATCH)
    rest, done = chain.run(data, 1 << 20, start=stopped)
    assert done is None and out + rest == chain.apply(data, 1 << 20)
    chain.close()


def test_the_budget_refuses_what_would_pass_it_naming_itself() -> None:
    budget = MemoryBudget(100 << 20, hint=" (raise it)")
    budget.take(64 << 20, "stream a")
    with pytest.raises(BudgetExceeded, match=r"^the SPU's SmartModule memory budget of 100 MiB \(64 MiB in use\) "
                                             r"has not got the 64 MiB stream b needs \(raise it\)$") as info:
        budget.take(64 << 20, "stream b")
    assert info.value.reason == "memoryBudget"
    assert budget.take_up_to(64 << 20) == 36 << 20  # as much as there is
    budget.give_back(100 << 20)
    assert budget.used == 0


def test_a_chain_budget_takes_from_the_spu_budget_and_names_whichever_is_spent() -> None:
    spu = MemoryBudget(10 << 20)
    chain_a = MemoryBudget(8 << 20, "the chain's memory cap", parent=spu, reason="chainMemory")
    chain_b = MemoryBudget(8 << 20, "the chain's memory cap", parent=spu, reason="chainMemory")
    chain_a.take(6 << 20, "stage 1")
    with pytest.raises(BudgetExceeded, match="the chain's memory cap of 8 MiB") as info:
        chain_a.take(3 << 20, "stage 2")  # the chain's own cap
    assert info.value.reason == "chainMemory"
    with pytest.raises(BudgetExceeded, match="SPU's SmartModule memory budget of 10 MiB") as info:
        chain_b.take(5 << 20, "stage 1")  # the SPU's: 6 of 10 MiB are used by chain a
    assert info.value.reason == "memoryBudget"
    assert (chain_b.used, spu.used) == (0, 6 << 20)  # a refused take takes nothing
    assert chain_b.take_up_to(8 << 20) == 4 << 20  # bounded by the parent
    chain_b.give_back(4 << 20)
    chain_a.give_back(6 << 20)
    assert spu.used == 0 and chain_a.used == 0 and chain_b.used == 0


def test_an_instance_holds_what_it_uses_and_borrows_room_to_grow_per_call() -> None:
    budget = MemoryBudget(100 << 20)
    acc = InstanceMemory(budget, cap=64 << 20)
    assert acc.start(1 << 20, "an instance") == 64 << 20  # lent up to the cap for init
    acc.settle(3 << 20)  # init grew to 3 MiB
    assert budget.used == 3 << 20
    assert acc.lend() == 64 << 20
    acc.settle(3 << 20)
    assert budget.used == 3 << 20
    other = InstanceMemory(budget, cap=64 << 20)
    other.start(90 << 20, "a big one")
    other.settle(90 << 20)
    assert acc.lend() == 10 << 20 and acc.short  # only what is left of the budget
    acc.settle(5 << 20)
    acc.release()
    other.release()
    other.release()  # idempotent
    assert budget.used == 0


def test_an_instance_cannot_grow_past_what_the_budget_lends_and_the_error_says_so() -> None:
    grower = wat("(drop (memory.grow (i32.const 32))) (i64.const -2147483647)")  # 2 MiB more, then the SDK's no-memory code
    budget = MemoryBudget(2 << 20)
    inst = cache_for(FAST).load(grower).instantiate(memory=InstanceMemory(budget, FAST.memory_bytes))
    assert budget.used == 64 << 10  # one page: what it has, not its 1 MiB... cap
    with pytest.raises(SmartModuleError) as info:
        call(inst)
    assert "could grow only to 2 MiB, not its cap" in str(info.value) and \
        "the SPU's SmartModule memory budget of 2 MiB" in str(info.value), str(info.value)
    assert budget.used == 64 << 10  # memory.grow failed: nothing more is held
    inst.close()
    assert budget.used == 0


def test_a_new_instance_past_the_budget_is_refused_naming_it() -> None:
    budget = MemoryBudget(1 << 20)
    loaded = cache_for(FAST).load(wat(memory='(memory (export "memory") 17)'))  # 17 pages: over 1 MiB
    with pytest.raises(SmartModuleError) as info:
        loaded.instantiate(memory=InstanceMemory(budget, FAST.memory_bytes))
    assert info.value.reason == "memoryBudget" and "has not got the 1088 KiB a filter instance needs" in \
        str(info.value), str(info.value)
    assert budget.used == 0


def test_a_budget_below_one_mib_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 MiB"):
        MemoryBudget(1000)


def test_an_instance_may_use_what_its_module_declares_or_the_cap() -> None:
    cache = cache_for(FAST)
    assert cache.load(wat(memory='(memory (export "memory") 1 4)')).memory_limit == 4 * 65536
    assert cache.load(GOOD).memory_limit == FAST.memory_bytes
    inst = cache.load(wat(memory='(memory (export "memory") 1 4)')).instantiate()
    assert inst.memory_limit == 4 * 65536
    inst.close()
