"""The budget's reservations (spend.Purse) and the cache warm-up (runners.warmup), on the event loop alone."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.run.spend import Purse
from orchestrator.runners import BudgetExhausted
from orchestrator.runners.warmup import CacheWarmer


def test_parallel_requests_wait_for_room_and_spend_never_passes_the_cap() -> None:
    async def main() -> tuple[float, list[str]]:
        purse = Purse(cap=0.02)
        log: list[str] = []

        async def request(name: str, worst: float, actual: float) -> None:
            try:
                await purse.reserve(worst)
            except BudgetExhausted:
                log.append(f"{name} stopped")
                return
            assert purse.spent + purse.held <= 0.02 + 1e-12
            log.append(f"{name} sent")
            await asyncio.sleep(0.01)
            purse.settle(worst, actual)

        await asyncio.gather(*(request(f"r{i}", 0.015, 0.004) for i in range(8)))
        return purse.spent, log

    spent, log = asyncio.run(main())
    assert spent <= 0.02
    # One worst case fits at a time; each settles for less, until what is left can't hold another.
    assert log[:2] == ["r0 sent", "r1 sent"]
    assert log.count("r7 stopped") + log.count("r7 sent") == 1
    assert sum(1 for line in log if line.endswith("sent")) == 2  # $0.008 spent, $0.012 left < $0.015
    assert sum(1 for line in log if line.endswith("stopped")) == 6


def test_a_request_that_can_never_fit_stops_at_once_with_the_figures() -> None:
    async def main() -> None:
        purse = Purse(cap=1.0, spent=0.9)
        with pytest.raises(BudgetExhausted, match=r"budget of \$1.00 would be exceeded: \$0.9000 spent"):
            await purse.reserve(0.2)
        await Purse(cap=None).reserve(1e9)  # no budget: nothing to hold

    asyncio.run(main())


def test_the_first_of_several_requests_with_one_prefix_writes_it_and_the_others_wait_for_its_reply() -> None:
    async def main() -> list[str]:
        warmer = CacheWarmer()
        log: list[str] = []

        async def request(name: str, begins_after: float) -> None:
            turn = await warmer.before("agent-prefix", cacheable=True)
            log.append(f"{name} sent")
            await asyncio.sleep(begins_after)
            log.append(f"{name} begun")
            turn.begun()

        await asyncio.gather(request("a", 0.05), request("b", 0.0), request("c", 0.0))
        return log

    log = asyncio.run(main())
    assert log[:2] == ["a sent", "a begun"]  # b and c went only once a's reply had begun
    assert sorted(log[2:]) == ["b begun", "b sent", "c begun", "c sent"]


def test_a_failed_writer_hands_the_prefix_on_and_short_prefixes_never_wait() -> None:
    async def main() -> list[str]:
        warmer = CacheWarmer()
        log: list[str] = []
        first = await warmer.before("p", cacheable=True)

        async def second() -> None:
            turn = await warmer.before("p", cacheable=True)
            log.append("second sent")
            turn.begun()

        task = asyncio.create_task(second())
        await asyncio.sleep(0.01)
        log.append("short sent" if (await warmer.before("q", cacheable=False)) else "")
        assert log == ["short sent"]
        first.failed()  # the writer's request failed before its reply began: the next one writes
        await task
        return log

    assert asyncio.run(main()) == ["short sent", "second sent"]


def test_warmup_off_sends_everything_at_once() -> None:
    async def main() -> int:
        warmer = CacheWarmer(enabled=False)
        await warmer.before("p", cacheable=True)
        await asyncio.wait_for(warmer.before("p", cacheable=True), 0.5)
        return 2

    assert asyncio.run(main()) == 2
