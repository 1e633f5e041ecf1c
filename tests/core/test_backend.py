"""Backend helpers (host tasks, thread-safe calls), and AsyncClient's start()/aclose() from anywhere."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest

from easyremote import AsyncClient, ComputeNode, Gateway
from easyremote.errors import GatewayUnavailableError
from easyremote_core._backend import HostTask, TaskSet, call_soon_threadsafe

from .conftest import address, running_node

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["memory", "tcp"])
def transport_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def gateway(transport_name: str) -> AsyncIterator[Gateway]:
    async with Gateway(port=0, host="127.0.0.1", transport=transport_name, heartbeat_timeout=3.0,
                       startup_grace=0) as gw:
        def functions(node: ComputeNode) -> None:
            node.register(lambda a, b: a + b, name="add")

        async with running_node(gw, "n1", functions):
            yield gw


def client_of(gw: Gateway) -> AsyncClient:
    return AsyncClient(address(gw), timeout=10.0, reconnect_interval=0.2)


# -- HostTask ---------------------------------------------------------------------------


async def test_a_host_task_outlives_the_task_group_it_was_spawned_in() -> None:
    started, cancelled = anyio.Event(), anyio.Event()

    async def work() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async with anyio.create_task_group() as tg:
        hosts: list[HostTask] = []
        tg.start_soon(lambda: _spawn_into(hosts, work))
    with anyio.fail_after(10):
        await started.wait()
        assert hosts[0].running
        async with anyio.create_task_group() as tg:  # closed from yet another task
            tg.start_soon(hosts[0].aclose)
    assert cancelled.is_set() and not hosts[0].running


async def _spawn_into(hosts: list[HostTask], work) -> None:
    hosts.append(HostTask.spawn(work, name="test host"))


async def test_aclose_raises_what_the_host_task_raised_and_only_once() -> None:
    async def work() -> None:
        raise LookupError("broken")

    host = HostTask.spawn(work, name="test host")
    with anyio.fail_after(10), pytest.raises(LookupError, match="broken"):
        await host.aclose()
    await host.aclose()


async def test_aclose_right_after_spawn_cancels_before_the_work_starts() -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        await anyio.lowlevel.checkpoint()
        ran = True

    host = HostTask.spawn(work, name="test host")
    with anyio.fail_after(10):
        await host.aclose()
    assert not ran and not host.running


# -- call_soon_threadsafe ---------------------------------------------------------------


async def test_call_soon_threadsafe_runs_the_function_in_the_loop() -> None:
    token = anyio.lowlevel.current_token()
    ran = anyio.Event()
    assert await anyio.to_thread.run_sync(call_soon_threadsafe, token, ran.set)
    with anyio.fail_after(10):
        await ran.wait()


async def _current_token() -> anyio.lowlevel.EventLoopToken:
    return anyio.lowlevel.current_token()


async def test_call_soon_threadsafe_to_a_finished_loop_returns_false(anyio_backend: str) -> None:
    run = functools.partial(anyio.run, _current_token, backend=anyio_backend)
    finished = await anyio.to_thread.run_sync(run)  # the token of a loop that has finished
    assert call_soon_threadsafe(finished, lambda: None) is False


# -- AsyncClient ------------------------------------------------------------------------


async def test_aclose_inside_a_task_group_opened_after_start(gateway: Gateway) -> None:
    client = client_of(gateway)
    await client.start()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            assert await client.execute("add", 1, 2) == 3
            await client.aclose()
            tg.cancel_scope.cancel()
    with pytest.raises(GatewayUnavailableError):
        await client.execute("add", 1, 2)


async def test_start_and_aclose_in_other_tasks_than_the_calls(gateway: Gateway) -> None:
    client = client_of(gateway)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.start)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 0)  # a task group of the caller's, opened and closed
        assert await client.execute("add", 2, 3) == 5
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.aclose)


async def test_start_inside_a_task_group_that_ends_before_the_client(gateway: Gateway) -> None:
    client = client_of(gateway)
    with anyio.fail_after(10):
        async with anyio.create_task_group():
            await client.start()
        assert await client.execute("add", 3, 4) == 7
        await client.aclose()


async def test_start_twice_aclose_twice_aclose_without_start_restart(gateway: Gateway) -> None:
    await client_of(gateway).aclose()
    client = client_of(gateway)
    with anyio.fail_after(20):
        await client.start()
        await client.start()
        assert await client.execute("add", 1, 1) == 2
        await client.aclose()
        await client.aclose()
        await client.start()  # a closed client can be started again
        assert await client.execute("add", 2, 2) == 4
        await client.aclose()


async def test_async_with_still_nests(gateway: Gateway) -> None:
    with anyio.fail_after(10):
        async with client_of(gateway) as first, client_of(gateway) as second:
            assert await first.execute("add", 1, 2) == await second.execute("add", 2, 1)


async def test_a_task_set_ends_its_tasks_with_its_owner() -> None:
    # What a link starts (a node's calls) is cancelled and awaited when the link's own work ends.
    failures: list[BaseException] = []
    tasks = TaskSet(failures.append)
    started, cancelled = anyio.Event(), anyio.Event()

    async def call() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async def owner_work() -> None:
        tasks.start_soon(call)
        await started.wait()

    before = len(anyio.get_running_tasks())
    with anyio.fail_after(5):
        await tasks.own(owner_work)
    assert cancelled.is_set()  # already, when own() returned
    assert failures == []
    assert len(anyio.get_running_tasks()) == before  # nothing left behind


async def test_a_task_that_raises_is_reported_to_the_owner() -> None:
    failures: list[BaseException] = []
    tasks = TaskSet(failures.append)
    reported = anyio.Event()

    async def broken() -> None:
        raise ValueError("a bug")

    async def owner_work() -> None:
        tasks.start_soon(broken)
        tasks.start_soon(reported_soon)

    async def reported_soon() -> None:
        await anyio.wait_all_tasks_blocked()
        reported.set()

    async def work() -> None:
        await owner_work()
        await reported.wait()

    with anyio.fail_after(5):
        await tasks.own(work)
    assert [str(failure) for failure in failures] == ["a bug"]

