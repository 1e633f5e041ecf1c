"""The connection supervisor and its retry policy: giving up, and surviving a broken policy."""

from __future__ import annotations

import logging

import anyio
import pytest

from easyremote import ComputeNode
from easyremote.errors import GatewayUnavailableError
from easyremote_core import RetryPolicy
from easyremote_core.testing.processes import free_port

pytestmark = pytest.mark.timeout(30)


class ThreeTries(RetryPolicy):
    """Waits 0.05 s twice, then gives up by returning None."""

    name = "three-tries"

    def __init__(self) -> None:
        super().__init__(base=0.05, cap=0.05)
        self.asked: list[int] = []

    def next_delay(self, attempt: int) -> float | None:
        self.asked.append(attempt)
        return 0.05 if attempt < 3 else None


class Broken(RetryPolicy):
    """Raises, then answers nonsense, then works."""

    def __init__(self, answers: list[object]) -> None:
        super().__init__(base=0.05, cap=0.05)
        self.answers = answers

    def next_delay(self, attempt: int) -> float | None:
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]


def nowhere() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


async def test_a_policy_that_returns_none_gives_up_with_gateway_unavailable() -> None:
    policy = ThreeTries()
    node = ComputeNode(nowhere(), "quitter", retry_policy=policy, connection_timeout=1)
    with anyio.fail_after(10), pytest.raises(GatewayUnavailableError,
                                             match="retry policy 'three-tries' gave up after 3 failed attempts"):
        await node.run()
    assert policy.asked == [1, 2, 3]
    assert node.status().state == "closed"


async def test_a_policy_that_raises_or_answers_nonsense_slows_the_node_but_never_stops_it(caplog) -> None:
    policy = Broken([RuntimeError("policy bug"), float("nan"), -1.0, "soon", 0.01, None])
    node = ComputeNode(nowhere(), "patient", retry_policy=policy, connection_timeout=1,
                       reconnect_interval=0.05, max_reconnect_interval=0.1)
    with caplog.at_level(logging.ERROR, logger="easyremote"), anyio.fail_after(10), \
            pytest.raises(GatewayUnavailableError, match="gave up after 6 failed attempts"):
        await node.run()  # four broken answers each cost a 0.1 s wait, then 0.01 s, then None
    broken = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retry policy")]
    assert len(broken) == 4, broken
    assert "failed; waiting 0.1 s" in broken[0]
    assert all("not a delay in seconds; waiting 0.1 s" in line for line in broken[1:]), broken


def test_policy_settings_are_configuration_errors() -> None:
    from easyremote.errors import ConfigurationError

    class Plain(RetryPolicy):
        def next_delay(self, attempt: int) -> float | None:
            return self.base

    with pytest.raises(ConfigurationError, match=r"base \(0\) must be greater than 0"):
        Plain(base=0)
    with pytest.raises(ConfigurationError, match=r"cap \(1\) must be at least base \(2\)"):
        Plain(base=2, cap=1)


async def test_a_protocol_error_of_the_transports_own_handshake_is_retried() -> None:
    from easyremote import Gateway
    from easyremote.errors import ProtocolError
    from easyremote_core.testing.memory import MemoryTransport

    class NotYetAGateway(MemoryTransport):
        """The first two dials reach something that is not an EasyRemote endpoint yet."""

        failures = 2

        async def connect(self, address, options):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise ProtocolError("the peer is not an EasyRemote tcp endpoint (it sent b'HTTP/1.1 400')")
            return await super().connect(address, options)

    transport = NotYetAGateway()
    async with Gateway(port=0, host="127.0.0.1", transport="memory", startup_grace=0) as gateway:
        node = ComputeNode(f"memory://127.0.0.1:{gateway.port}", "patient", transport=transport,
                           reconnect_interval=0.05, max_reconnect_interval=0.1)
        node.register(lambda: 1, name="one")
        async with node:
            with anyio.fail_after(10):
                await node.wait_ready()
        assert transport.failures == 0 and node.status().reconnect_attempts >= 2
