"""Plugin instances start a few at a time (runtime/slot.py `starts`): a place
is held from launch until the instance answers its health ping or gives up,
so hundreds of plugins starting together do not all miss their ready
timeouts. Real child processes; the readiness is what the test says it is."""

from __future__ import annotations

import asyncio
import sys

from precinct.confine.launch import LaunchSpec
from precinct.runtime.slot import RUNNING, STOPPED, RestartPolicy, Slot

DEADLINE = 60


async def _fleet(count: int, in_flight: int):
    starts = asyncio.Semaphore(in_flight)
    ready = {i: asyncio.Event() for i in range(count)}    # the test decides when each one "answers"
    launched: list[int] = []
    starting: list[int] = []     # at each launch: how many launched instances had not answered yet

    def launcher(i):
        async def launch(instance: str) -> LaunchSpec:
            launched.append(i)
            starting.append(sum(1 for j in launched if not ready[j].is_set()))
            return LaunchSpec(argv=[sys.executable, "-c", "import time; time.sleep(600)"], env={}, cwd="/",
                              instance=instance)
        return launch

    def pinger(i):
        async def ping(_instance: str, deadline: float) -> bool:
            try:
                await asyncio.wait_for(ready[i].wait(), deadline)
                return True
            except asyncio.TimeoutError:
                return False
        return ping

    policy = RestartPolicy(ready_timeout=DEADLINE, grace_period=1)
    slots = [Slot(f"p{i}", launcher(i), pinger(i), policy, starts=starts) for i in range(count)]
    return slots, ready, launched, starting


async def _until(check, what: str) -> None:
    for _ in range(DEADLINE * 20):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_only_so_many_start_at_once_and_each_answer_lets_the_next_in():
    async def main():
        slots, ready, launched, starting = await _fleet(count=5, in_flight=2)
        for slot in slots:
            slot.start()
        for n in range(5):              # answer one instance at a time, in launch order
            await _until(lambda: len(launched) > n, f"launch number {n + 1}")
            ready[launched[n]].set()
            await _until(lambda: slots[launched[n]].status.state == RUNNING, f"launch {n + 1} running")
        assert sorted(launched) == list(range(5))
        assert max(starting) == 2, starting       # never a third before one of two had answered
        await asyncio.gather(*(s.stop() for s in slots))
    asyncio.run(main())


def test_a_slot_stopped_while_it_waits_for_its_turn_stops_at_once():
    async def main():
        slots, ready, launched, _starting = await _fleet(count=2, in_flight=1)
        for slot in slots:
            slot.start()
        await _until(lambda: len(launched) == 1, "the first launch")
        waiting = slots[1 - launched[0]]
        await asyncio.wait_for(waiting.stop(), 10)     # never launched, and does not wait for a place
        assert waiting.status.state == STOPPED and len(launched) == 1
        await slots[launched[0]].stop()
    asyncio.run(main())
