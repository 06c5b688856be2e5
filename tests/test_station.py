"""The print station: idempotent job ids, faults, service time on a virtual clock, back-pressure,
and the state table walked entry by entry."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest

from printer.driver import (
    DriverStatus,
    Fault,
    FaultKind,
    JobOutcome,
    PrinterDriver,
    PrintJob,
    RandomFaults,
    ScriptedFaults,
    SimulatedDriver,
    fault_kind,
)
from printer.errors import ConsumableOut, DeviceFault, LaserFault, PrintJam
from printer.station import (
    TRANSITIONS,
    PrintStation,
    StationEvent,
    StationState,
    next_state,
)

T = TypeVar("T")
SERVICE = 3.6  # s per card: 1,000 cards/h


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


class VirtualTime:
    """A clock that moves only when the device sleeps; ``hold()`` keeps a card in the device."""

    def __init__(self) -> None:
        self.now = 0.0
        self._gate: asyncio.Event | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if self._gate is not None:
            await self._gate.wait()
        self.now += seconds
        await asyncio.sleep(0)

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        assert self._gate is not None
        gate, self._gate = self._gate, None
        gate.set()


def station(t: VirtualTime, **kw) -> PrintStation:  # type: ignore[no-untyped-def]
    return PrintStation("laser-1", SERVICE, clock=t.clock, sleep=t.sleep, **kw)


def sim(s: PrintStation) -> SimulatedDriver:
    assert isinstance(s.driver, SimulatedDriver)
    return s.driver


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def state(s: PrintStation) -> StationState:
    # A call, not the property: mypy would otherwise keep a narrowed state across the awaits.
    return s.state


def job(n: int | str) -> PrintJob:
    return PrintJob(f"job-{n}")


# -- the state table ----------------------------------------------------------------------------


def test_next_state_walks_every_entry_and_refuses_the_rest() -> None:
    for state, event in itertools.product(StationState, StationEvent):
        if (state, event) in TRANSITIONS:
            assert next_state(state, event) is TRANSITIONS[(state, event)]
        else:
            with pytest.raises(RuntimeError, match="illegal transition"):
                next_state(state, event)


def test_a_station_run_takes_every_transition() -> None:
    """Drive a simulated station through each table entry, with real faults, not by poking state."""
    taken: set[tuple[StationState, StationEvent]] = set()
    t = VirtualTime()
    script = ScriptedFaults(
        [
            None,  # BUSY -done-> IDLE
            Fault(FaultKind.LASER),  # BUSY -fault-> FAULTED -reset_ok-> IDLE
            Fault(FaultKind.LASER, sticky=True),  # FAULTED -reset_failed-> NEEDS_ATTENTION
            FaultKind.JAM,  # BUSY -attention-> NEEDS_ATTENTION -reset_ok-> IDLE
            FaultKind.LASER,  # FAULTED -close-> OFFLINE (second run)
            FaultKind.JAM,  # NEEDS_ATTENTION -close-> OFFLINE (third run)
        ]
    )
    s = station(t, faults=script, on_transition=lambda a, e, b: taken.add((a, e)))
    dev = sim(s)

    async def main() -> None:
        async with s:  # OFFLINE -open-> IDLE ... IDLE -close-> OFFLINE
            await s.submit(job(1))
            with pytest.raises(LaserFault):
                await s.submit(job(2))
            assert s.state is StationState.FAULTED
            await s.reset()
            with pytest.raises(LaserFault):
                await s.submit(job(3))
            with pytest.raises(LaserFault):
                await s.reset()
            assert state(s) is StationState.NEEDS_ATTENTION
            with pytest.raises(LaserFault):
                await s.reset()  # NEEDS_ATTENTION -reset_failed-> NEEDS_ATTENTION
            dev.repair_laser()
            await s.reset()
            with pytest.raises(PrintJam):
                await s.submit(job(4))
            dev.clear_jam()
            await s.reset()
        async with s:
            with pytest.raises(LaserFault):
                await s.submit(job(5))
        async with s:
            dev.repair_laser()  # the device, not the station, still holds the laser fault
            with pytest.raises(PrintJam):
                await s.submit(job(6))

    run(main)
    assert taken == set(TRANSITIONS)


def test_illegal_operations_raise() -> None:
    t = VirtualTime()
    s = station(t)

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await s.submit(job(1))  # not open
        with pytest.raises(RuntimeError):
            await s.reset()  # OFFLINE has no reset
        async with s:
            with pytest.raises(RuntimeError, match="illegal transition"):
                await s.reset()  # IDLE has nothing to reset
            with pytest.raises(RuntimeError, match="illegal transition"):
                await s.open()
            assert s.state is StationState.IDLE
        await s.close()  # closing twice is harmless
        assert state(s) is StationState.OFFLINE

    run(main)


# -- idempotent job ids -------------------------------------------------------------------------


def test_resubmitting_a_printed_job_returns_the_record() -> None:
    t = VirtualTime()
    s = station(t)

    async def main() -> None:
        async with s:
            first = await s.submit(job(1))
            again = await s.submit(job(1))
            assert again is first
            assert t.now == SERVICE  # the retry took no device time

    run(main)
    assert sim(s).printed == ["job-1"]
    assert s.stats.printed == 1 and s.stats.duplicates == 1


def test_retry_after_a_timeout_joins_the_job_in_the_device() -> None:
    t = VirtualTime()
    s = station(t)

    async def main() -> None:
        async with s:
            t.hold()
            first = asyncio.create_task(s.submit(job(1)))
            await settle()
            assert s.current_job == "job-1"
            first.cancel()  # the caller timed out
            await settle()
            assert first.cancelled()
            retry = asyncio.create_task(s.submit(job(1)))
            await settle()
            t.release()
            result = await retry
            assert result.outcome is JobOutcome.PRINTED
            assert (await s.submit(job(1))) is result

    run(main)
    assert sim(s).printed == ["job-1"]


def test_concurrent_duplicates_print_once() -> None:
    t = VirtualTime()
    s = station(t, queue_limit=2)

    async def main() -> None:
        async with s:
            t.hold()
            tasks = [asyncio.create_task(s.submit(job(n % 2))) for n in range(6)]
            await settle()
            assert s.queued == 1  # job-0 in the device, job-1 queued, the rest joined them
            t.release()
            results = await asyncio.gather(*tasks)
            assert {r.job_id for r in results} == {"job-0", "job-1"}

    run(main)
    assert sorted(sim(s).printed) == ["job-0", "job-1"]
    assert s.stats.duplicates == 4


def test_a_failed_job_is_not_recorded() -> None:
    t = VirtualTime()
    s = station(t, faults=ScriptedFaults([FaultKind.LASER]))

    async def main() -> None:
        async with s:
            with pytest.raises(LaserFault):
                await s.submit(job(1))
            await s.reset()
            assert (await s.submit(job(1))).outcome is JobOutcome.PRINTED

    run(main)
    assert sim(s).printed == ["job-1"]


def test_the_record_keeps_the_last_history_ids() -> None:
    t = VirtualTime()
    s = station(t, history=3)

    async def main() -> None:
        async with s:
            for n in range(5):
                await s.submit(job(n))
            assert s.result_of("job-0") is None
            assert s.result_of("job-4") is not None
            await s.submit(job(4))  # in the window: not printed again

    run(main)
    assert sim(s).printed == [f"job-{n}" for n in range(5)]


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "exc", "state"),
    [
        (FaultKind.JAM, PrintJam, StationState.NEEDS_ATTENTION),
        (FaultKind.LASER, LaserFault, StationState.FAULTED),
        (FaultKind.CONSUMABLE_OUT, ConsumableOut, StationState.NEEDS_ATTENTION),
        (FaultKind.DEVICE, DeviceFault, StationState.NEEDS_ATTENTION),
    ],
)
def test_each_fault_kind(kind: FaultKind, exc: type[DeviceFault], state: StationState) -> None:
    t = VirtualTime()
    s = station(t, faults=ScriptedFaults([None, Fault(kind, at=0.25), None]))

    async def main() -> None:
        async with s:
            await s.submit(job(1))
            queued = asyncio.create_task(s.submit(job(3)))
            with pytest.raises(exc) as caught:
                await s.submit(job(2))
            assert type(caught.value) is exc
            assert fault_kind(caught.value) is kind
            assert caught.value.station == "laser-1"
            assert "job-2" in str(caught.value)
            assert s.state is state
            await settle()
            assert not queued.done()  # the queue waits for the fault to be cleared
            assert t.now == pytest.approx(SERVICE * 1.25)  # the fault struck a quarter in
            dev = sim(s)
            dev.clear_jam()
            dev.repair_laser()
            dev.refill("ribbon", 10)
            await s.reset()
            assert (await queued).outcome is JobOutcome.PRINTED

    run(main)
    assert s.stats.faults[kind] == 1
    assert sum(s.stats.faults.values()) == 1
    assert s.stats.failed == 1 and s.stats.printed == 2
    assert sim(s).printed == ["job-1", "job-3"]


def test_consumable_runs_out_by_count() -> None:
    t = VirtualTime()
    s = station(t, consumables={"ribbon": 2, "film": 5})

    async def main() -> None:
        async with s:
            await s.submit(job(1))
            await s.submit(job(2))
            status = await s.driver.status()
            assert status.fault is FaultKind.CONSUMABLE_OUT and not status.ready
            before = t.now
            with pytest.raises(ConsumableOut, match="ribbon out"):
                await s.submit(job(3))
            assert t.now == before  # no card was fed
            assert s.state is StationState.NEEDS_ATTENTION
            with pytest.raises(ConsumableOut):
                await s.reset()
            sim(s).refill("ribbon", 100)
            await s.reset()
            await s.submit(job(3))
            status = await s.driver.status()
            assert status.ready and dict(status.consumables) == {"ribbon": 99, "film": 2}

    run(main)
    assert sim(s).printed == ["job-1", "job-2", "job-3"]


def test_random_faults_follow_their_rates_and_seed() -> None:
    def kinds(seed: int, rates: dict[FaultKind, float]) -> list[FaultKind | None]:
        policy = RandomFaults(rates, random.Random(seed).random)
        return [(f.kind if (f := policy.next_fault(job(n))) else None) for n in range(2000)]

    rates = {FaultKind.JAM: 0.02, FaultKind.LASER: 0.01}
    a, b = kinds(1, rates), kinds(1, rates)
    assert a == b
    assert 20 <= a.count(FaultKind.JAM) <= 60 and 5 <= a.count(FaultKind.LASER) <= 35
    assert set(kinds(2, {FaultKind.JAM: 0.0})) == {None}
    assert set(kinds(3, {FaultKind.LASER: 1.0})) == {FaultKind.LASER}
    with pytest.raises(ValueError):
        RandomFaults({FaultKind.JAM: 0.7, FaultKind.LASER: 0.7}, random.random)


def test_injected_fault_goes_ahead_of_the_policy() -> None:
    t = VirtualTime()
    s = station(t, faults=ScriptedFaults([FaultKind.LASER]))

    async def main() -> None:
        async with s:
            sim(s).inject(FaultKind.JAM)
            with pytest.raises(PrintJam):
                await s.submit(job(1))
            sim(s).clear_jam()
            await s.reset()
            with pytest.raises(LaserFault):  # the policy's turn comes next
                await s.submit(job(2))

    run(main)


def test_a_foreign_driver_error_is_mapped_at_the_boundary() -> None:
    class Broken(SimulatedDriver):
        async def print(self, job: PrintJob) -> JobOutcome:
            raise OSError("usb gone")

    t = VirtualTime()
    s = PrintStation("colour-1", driver=Broken(1.0), clock=t.clock)

    async def main() -> None:
        async with s:
            with pytest.raises(DeviceFault) as caught:
                await s.submit(job(1))
            assert type(caught.value) is DeviceFault
            assert isinstance(caught.value.__cause__, OSError)
            assert caught.value.station == "colour-1"
            assert s.state is StationState.NEEDS_ATTENTION

    run(main)
    assert s.stats.faults[FaultKind.DEVICE] == 1


# -- time, queue, cancel ------------------------------------------------------------------------


def test_service_time_runs_on_the_injected_clock() -> None:
    t = VirtualTime()
    s = station(t)
    wall = time.perf_counter()

    async def main() -> list[float]:
        async with s:
            results = [await s.submit(job(n)) for n in range(1000)]
            assert s.utilisation() == pytest.approx(1.0)
            t.now += 1000 * SERVICE  # as long again with nothing to print
            assert s.utilisation() == pytest.approx(0.5)
        return [r.service_s for r in results]

    services = run(main)
    assert t.now == pytest.approx(2000 * SERVICE)  # two simulated hours...
    assert time.perf_counter() - wall < 5.0  # ...in far less real time
    assert services == pytest.approx([SERVICE] * 1000)
    assert s.stats.busy_s == pytest.approx(1000 * SERVICE)
    assert s.stats.jobs == s.stats.printed == 1000


def test_queue_bound_applies_back_pressure_in_order() -> None:
    t = VirtualTime()
    s = station(t, queue_limit=2)

    async def main() -> None:
        async with s:
            t.hold()
            tasks = [asyncio.create_task(s.submit(job(n))) for n in range(5)]
            await settle()
            assert s.current_job == "job-0"
            assert s.queued == 2 and not s.has_room
            assert not any(task.done() for task in tasks)
            t.release()
            await asyncio.gather(*tasks)
            assert s.queued == 0 and s.has_room

    run(main)
    assert sim(s).printed == [f"job-{n}" for n in range(5)]


def test_cancel_queued_and_in_device() -> None:
    t = VirtualTime()
    s = station(t)

    async def main() -> None:
        async with s:
            t.hold()
            first = asyncio.create_task(s.submit(job(1)))
            second = asyncio.create_task(s.submit(job(2)))
            await settle()
            assert await s.cancel("job-2")
            assert (await second).outcome is JobOutcome.CANCELLED
            assert await s.cancel("job-1")
            assert (await first).outcome is JobOutcome.CANCELLED
            assert not await s.cancel("job-1")
            assert not await s.cancel("job-9")
            t.release()
            assert (await s.submit(job(1))).outcome is JobOutcome.PRINTED  # cancelled: not recorded

    run(main)
    assert sim(s).printed == ["job-1"]
    assert s.stats.cancelled == 2


def test_close_finishes_the_card_in_the_device_and_cancels_the_queue() -> None:
    t = VirtualTime()
    s = station(t, queue_limit=1)

    async def main() -> None:
        await s.open()
        t.hold()
        tasks = [asyncio.create_task(s.submit(job(n))) for n in range(3)]
        await settle()
        closing = asyncio.create_task(s.close())
        await settle()
        t.release()
        await closing
        outcomes = [(await task).outcome for task in tasks]
        assert outcomes == [JobOutcome.PRINTED, JobOutcome.CANCELLED, JobOutcome.CANCELLED]
        assert s.state is StationState.OFFLINE

    run(main)
    assert sim(s).printed == ["job-0"]


# -- the seam -----------------------------------------------------------------------------------


def test_simulated_driver_is_a_printer_driver() -> None:
    driver: PrinterDriver = SimulatedDriver(1.0)
    assert isinstance(driver, PrinterDriver)

    async def main() -> DriverStatus:
        await driver.open()
        return await driver.status()

    assert run(main) == DriverStatus(ready=True, consumables={})


def test_print_job_hides_its_planes() -> None:
    engrave = np.full((1275, 253), 0xFF, np.uint8)
    colour = np.zeros((1275, 2022, 3), np.uint8)
    j = PrintJob("card-000123.a1", engrave=engrave, colour=colour)
    assert repr(j) == "PrintJob(job_id='card-000123.a1', engrave=1275x253, colour=1275x2022x3)"
    for bad in ["", "x" * 65, "has space", "-lead", "名前"]:
        with pytest.raises(ValueError):
            PrintJob(bad)
    with pytest.raises(ValueError):
        PrintJob("j1", engrave=np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError):
        PrintJob("j1", colour=np.zeros((3, 3), np.uint8))


def test_station_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        PrintStation("x")  # simulated, but no service time
    with pytest.raises(ValueError):
        PrintStation("x", driver=SimulatedDriver(1.0), faults=ScriptedFaults([]))
    with pytest.raises(ValueError):
        PrintStation("x", 1.0, queue_limit=0)
    with pytest.raises(ValueError):
        Fault(FaultKind.JAM, at=1.5)
