"""wait_until_listening against a real gateway process: refused, hung (SIGSTOP) and answering."""

from __future__ import annotations

import anyio
import anyio.to_thread
import pytest

from easyremote_core import Address, wait_until_listening
from easyremote_core.testing.processes import GatewayProcess

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def returns_within(seconds: float, address: Address) -> bool:
    with anyio.move_on_after(seconds):
        await wait_until_listening(address)
        return True
    return False


@pytest.fixture(params=["tcp", "grpc"])
def gateway(request: pytest.FixtureRequest):
    with GatewayProcess(args=("--transport", request.param)) as process:
        process.start()
        yield process


async def test_an_answering_gateway_leaves_the_full_backoff_in_place(gateway: GatewayProcess) -> None:
    assert not await returns_within(1.5, Address(gateway.host, gateway.port))


async def test_a_hung_gateway_is_back_when_it_speaks_again(gateway: GatewayProcess) -> None:
    address = Address(gateway.host, gateway.port)
    await anyio.to_thread.run_sync(gateway.stop)
    async with anyio.create_task_group() as tg:
        returned = anyio.Event()

        async def wait() -> None:
            await wait_until_listening(address)
            returned.set()

        tg.start_soon(wait)
        with anyio.move_on_after(1.5):  # longer than a look: it found the gateway silent
            await returned.wait()
        assert not returned.is_set()
        await anyio.to_thread.run_sync(gateway.cont)
        resumed = anyio.current_time()
        with anyio.fail_after(5):
            await returned.wait()
        assert anyio.current_time() - resumed < 0.5


async def test_a_gateway_found_hung_that_answers_the_next_look_woke_up(gateway: GatewayProcess) -> None:
    """The next backoff's first look may come just after the gateway woke: it was hung all the same."""
    address = Address(gateway.host, gateway.port)
    await anyio.to_thread.run_sync(gateway.stop)
    assert not await returns_within(1.0, address)  # a backoff that ended while it was hung
    await anyio.to_thread.run_sync(gateway.cont)
    assert await returns_within(1.0, address)
    assert not await returns_within(1.5, address)  # that news is told once: now it simply answers


async def test_a_refusing_gateway_is_back_when_it_listens_again(gateway: GatewayProcess) -> None:
    address = Address(gateway.host, gateway.port)
    await anyio.to_thread.run_sync(gateway.kill)
    async with anyio.create_task_group() as tg:
        returned = anyio.Event()

        async def wait() -> None:
            await wait_until_listening(address)
            returned.set()

        tg.start_soon(wait)
        await anyio.to_thread.run_sync(gateway.restart)
        listening = anyio.current_time()
        with anyio.fail_after(5):
            await returned.wait()
        assert anyio.current_time() - listening < 1.5
