"""The health probe contract suite: what every HealthProbe keeps, whoever wrote it.

Run it against an installed probe::

    python -m pytest -p easyremote_core.testing.pytest_plugin --pyargs easyremote_core.testing.probe_contract \\
        --easyremote-health-probe NAME

or subclass :class:`TestHealthProbeContract` in your own tests and set ``probe_names``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import anyio
import pytest

from .._connection import Connection
from .._plugins import get_plugin_manager
from .._probes import HealthProbe, LinkDead, LinkHealth
from .pytest_plugin import PROBE_DEST, selected_names

__all__ = ["TestHealthProbeContract"]

#: The link every test watches: a heartbeat every 0.05 s, dead after 1 s of silence.
INTERVAL = 0.05
TIMEOUT = 1.0
#: A probe that detects silence does so by ``TIMEOUT`` plus this much.
LATE = 0.25


class _QuietConnection(Connection):
    """A link that carries nothing; the tests move ``last_received`` themselves."""

    peer = "probe-contract"

    async def send(self, frame: bytes) -> None:
        pass

    async def receive(self) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        pass


def _link() -> LinkHealth:
    return LinkHealth(connection=_QuietConnection(), heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT,
                      health_check_interval=TIMEOUT / 2, last_received=anyio.current_time())


def _selected_probes(config: pytest.Config, fixed: Sequence[str] | None) -> list[str]:
    return selected_names(config, "health probe", PROBE_DEST, fixed)


async def _frames_until(link: LinkHealth, seconds: float) -> None:
    """Frames arrive every ``INTERVAL`` for ``seconds``: a live link."""
    with anyio.move_on_after(seconds):
        while True:
            await anyio.sleep(INTERVAL)
            link.last_received = anyio.current_time()


@pytest.mark.anyio
class TestHealthProbeContract:
    """What a link relies on from a health probe, run once per probe (asyncio).

    The probe is built as the core builds it, ``factory()``. ``probe_names`` pins the probes
    (default: ``--easyremote-health-probe``, else every installed one). A probe that sets
    ``detects_silence`` is also held to declaring a silent link dead in time.
    """

    probe_names: ClassVar[Sequence[str] | None] = None

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "probe_name" not in metafunc.fixturenames:
            return
        names = _selected_probes(metafunc.config, type(self).probe_names)
        if "silence_detector" in metafunc.fixturenames:  # only probes that say they detect silence
            names = [name for name in names if getattr(get_plugin_manager().health_probe(name), "detects_silence",
                                                         False)]
        metafunc.parametrize("probe_name", names)

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    def factory(self, probe_name: str) -> Callable[[], HealthProbe]:
        return get_plugin_manager().entries("health probe")[probe_name].factory

    @pytest.fixture
    def silence_detector(self, factory: Callable[[], HealthProbe]) -> HealthProbe:
        return factory()

    @pytest.mark.timeout(30)
    def test_it_is_a_health_probe_under_its_registered_name(self, factory: Callable[[], HealthProbe],
                                                          probe_name: str) -> None:
        probe = factory()
        assert isinstance(probe, HealthProbe)
        assert probe.name == probe_name, f"registered as {probe_name!r} but names itself {probe.name!r}"

    @pytest.mark.timeout(30)
    async def test_a_live_link_is_never_declared_dead(self, factory: Callable[[], HealthProbe]) -> None:
        link = _link()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_frames_until, link, 2 * TIMEOUT)
            with anyio.move_on_after(2 * TIMEOUT - 0.1):
                await factory().watch(link)  # LinkDead here fails the test
                return  # returning is allowed: the probe has nothing to watch on this link

    @pytest.mark.timeout(30)
    async def test_watch_ends_at_once_when_cancelled(self, factory: Callable[[], HealthProbe]) -> None:
        link = _link()
        with anyio.move_on_after(0.1):
            await factory().watch(link)
        started = anyio.current_time()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await factory().watch(link)
        assert anyio.current_time() - started < 0.5, "watch() did not end when its link closed"

    @pytest.mark.timeout(30)
    async def test_a_silent_link_is_declared_dead_in_time(self, silence_detector: HealthProbe, probe_name: str) -> None:
        link = _link()
        started = anyio.current_time()
        with anyio.fail_after(TIMEOUT + LATE), pytest.raises(LinkDead) as caught:
            await silence_detector.watch(link)
        assert str(caught.value), "LinkDead carries the reason the link is dead"
        assert anyio.current_time() - started > INTERVAL, "declared dead before any frame could be late"

    @pytest.mark.timeout(30)
    async def test_one_probe_watches_each_link_on_its_own(self, silence_detector: HealthProbe) -> None:
        silent, live = _link(), _link()
        outcome: dict[str, str] = {}

        async def watch(name: str, link: LinkHealth) -> None:
            try:
                await silence_detector.watch(link)
            except LinkDead:
                outcome[name] = "dead"

        with anyio.move_on_after(TIMEOUT + LATE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_frames_until, live, TIMEOUT + LATE)
                tg.start_soon(watch, "silent", silent)
                tg.start_soon(watch, "live", live)
        assert outcome == {"silent": "dead"}, outcome
