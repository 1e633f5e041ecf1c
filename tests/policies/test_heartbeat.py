"""The heartbeat probe on asyncio and trio: silence is detected within heartbeat_timeout (+10 %)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterator

import anyio
import pytest
from easyremote_policies import HeartbeatProbe
from trio.testing import MockClock

import easyremote_core._heartbeat as heartbeat_module
from easyremote_core import LinkDead, LinkHealth, get_plugin_manager
from easyremote_core._backend import sleeper
from easyremote_core._heartbeat import SilenceWatch

pytestmark = pytest.mark.anyio

TIMEOUT = 0.3
WARNING = re.compile(r"^Heartbeat timeout: \d+\.\ds > 0\.3s$")


@pytest.fixture(params=["asyncio", "trio-virtual"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """asyncio on the wall clock, and trio on a virtual clock (MockClock) where the timing
    bounds are exact whatever the load of the machine."""
    if request.param == "trio-virtual":
        return ("trio", {"clock": MockClock(autojump_threshold=0)})
    return "asyncio"


@pytest.fixture
def slack(anyio_backend: object) -> float:
    """How late, beyond the probe's own +10 %, a busy machine may wake it: none in virtual time."""
    return 0.0 if isinstance(anyio_backend, tuple) else 0.5


class UntouchableConnection:
    """Stands in for the link's connection: the probe is transport-neutral and must not use it."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the heartbeat probe touched connection.{name}")


def make_link(timeout: float = TIMEOUT, last_received: float | None = None) -> LinkHealth:
    return LinkHealth(
        connection=UntouchableConnection(),  # type: ignore[arg-type]
        heartbeat_interval=timeout / 3,
        heartbeat_timeout=timeout,
        health_check_interval=timeout * 2,
        last_received=anyio.current_time() if last_received is None else last_received,
    )


def heartbeat_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[str]:
    for record in caplog.records:
        if record.name == "easyremote.probes" and record.levelno == logging.WARNING:
            yield record.getMessage()


async def feed_frames(link: LinkHealth, every: float) -> None:
    while True:
        await anyio.sleep(every)
        link.last_received = anyio.current_time()


@pytest.mark.timeout(10)
async def test_silence_is_detected_within_the_timeout(caplog: pytest.LogCaptureFixture, slack: float) -> None:
    link = make_link()
    with anyio.fail_after(TIMEOUT * 5), pytest.raises(LinkDead, match="^Heartbeat timeout detected$"):
        await HeartbeatProbe().watch(link)
    silence = anyio.current_time() - link.last_received
    error = silence - TIMEOUT
    assert -1e-3 <= error <= TIMEOUT * 0.1 + slack, f"detected after {silence:.4f}s (error {error:+.4f}s)"
    warnings = list(heartbeat_warnings(caplog))
    assert len(warnings) == 1 and WARNING.match(warnings[0]), warnings


@pytest.mark.timeout(10)
async def test_an_unset_last_received_counts_from_the_start_of_watch(slack: float) -> None:
    link = make_link(last_received=0.0)
    started = anyio.current_time()
    with anyio.fail_after(TIMEOUT * 5), pytest.raises(LinkDead):
        await HeartbeatProbe().watch(link)
    assert TIMEOUT - 1e-3 <= anyio.current_time() - started <= TIMEOUT * 1.1 + slack


@pytest.mark.timeout(10)
async def test_a_link_already_silent_for_too_long_is_dead_at_once(caplog: pytest.LogCaptureFixture) -> None:
    # The guide's line, word for word: the last frame came 16.2 s ago and the timeout is 15 s.
    link = make_link(timeout=15.0, last_received=anyio.current_time() - 16.2)
    with anyio.fail_after(1), pytest.raises(LinkDead, match="^Heartbeat timeout detected$"):
        await HeartbeatProbe().watch(link)
    assert list(heartbeat_warnings(caplog)) == ["Heartbeat timeout: 16.2s > 15s"]


@pytest.mark.timeout(10)
async def test_frames_that_keep_arriving_keep_the_link_alive(caplog: pytest.LogCaptureFixture) -> None:
    link = make_link()
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed_frames, link, 0.05)
        with anyio.move_on_after(TIMEOUT * 4) as scope:
            await HeartbeatProbe().watch(link)  # raises LinkDead if it judges the link dead
        tg.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert list(heartbeat_warnings(caplog)) == []


@pytest.mark.timeout(10)
async def test_silence_after_frames_is_measured_from_the_last_frame(caplog: pytest.LogCaptureFixture,
                                                                    slack: float) -> None:
    link = make_link()
    feeding_for = TIMEOUT * 3

    async def feed_then_fall_silent() -> None:
        with anyio.move_on_after(feeding_for):
            await feed_frames(link, 0.05)

    with anyio.fail_after(feeding_for + TIMEOUT * 5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed_then_fall_silent)
            with pytest.raises(LinkDead):
                await HeartbeatProbe().watch(link)
    silence = anyio.current_time() - link.last_received
    assert TIMEOUT - 1e-3 <= silence <= TIMEOUT * 1.1 + slack, f"detected {silence:.4f}s after the last frame"
    assert len(list(heartbeat_warnings(caplog))) == 1


@pytest.mark.timeout(10)
async def test_a_frame_just_before_the_deadline_rearms_it(slack: float) -> None:
    link = make_link()
    probe_done = anyio.Event()
    outcome: list[BaseException] = []

    async def watch() -> None:
        try:
            await HeartbeatProbe().watch(link)
        except LinkDead as exc:
            outcome.append(exc)
        probe_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await anyio.sleep(TIMEOUT * 0.8)
        link.last_received = anyio.current_time()  # one late frame
        await anyio.sleep(TIMEOUT * 0.5)  # past the first deadline, before the second
        assert not probe_done.is_set()
        with anyio.fail_after(TIMEOUT * 2):
            await probe_done.wait()
    assert len(outcome) == 1
    assert TIMEOUT - 1e-3 <= anyio.current_time() - link.last_received <= TIMEOUT * 1.1 + slack


class SleepCounter:
    """Stands in for the probe's ``sleeper()``: the event loop's sleep, counting the sleeps."""

    def __init__(self) -> None:
        self.sleeps = 0

    def __call__(self) -> Callable[[float], Awaitable[None]]:
        sleep = sleeper()

        async def counted(seconds: float) -> None:
            self.sleeps += 1
            await sleep(seconds)

        return counted


@pytest.mark.timeout(10)
@pytest.mark.parametrize("anyio_backend", [("trio", {"clock": MockClock(autojump_threshold=0)})])
async def test_guide_settings_in_virtual_time_wake_about_once_per_timeout(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Virtual time (trio's MockClock) so the guide's 5 s heartbeat / 15 s timeout run in milliseconds.
    counter = SleepCounter()
    monkeypatch.setattr(heartbeat_module, "sleeper", counter)
    link = make_link(timeout=15.0)

    async def feed_then_fall_silent() -> None:
        with anyio.move_on_after(120):
            await feed_frames(link, 5.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed_then_fall_silent)
        with pytest.raises(LinkDead):
            await HeartbeatProbe().watch(link)
    assert anyio.current_time() - link.last_received == pytest.approx(15.0)
    assert list(heartbeat_warnings(caplog)) == ["Heartbeat timeout: 15.0s > 15s"]
    assert counter.sleeps <= 15  # 135 s watched: a polling loop would have slept hundreds of times


@pytest.mark.timeout(10)
@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
async def test_a_meaningless_timeout_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match=r"^heartbeat_timeout \(.*\) must be a finite number greater than 0"):
        await HeartbeatProbe().watch(make_link(timeout=timeout))


@pytest.mark.timeout(10)
async def test_the_plugin_manager_builds_the_probe() -> None:
    probe = get_plugin_manager().health_probe("heartbeat")
    assert isinstance(probe, HeartbeatProbe)
    with anyio.fail_after(TIMEOUT * 5), pytest.raises(LinkDead):
        await probe.watch(make_link())


@pytest.mark.timeout(10)
@pytest.mark.parametrize("anyio_backend", [("trio", {"clock": MockClock(autojump_threshold=0)})])
async def test_one_task_watches_a_thousand_links_and_ends_only_the_silent_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A gateway's SilenceWatch: the heartbeat probe's rule for every link, in virtual time.
    watch = SilenceWatch()
    links = [make_link(timeout=15.0) for _ in range(1000)]
    for index, link in enumerate(links):
        link.many_peers, link.peer_name = True, f"node n{index}"
    dead: dict[int, tuple[str, float]] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        for index, link in enumerate(links):
            watch.watch(link, lambda reason, i=index: dead.setdefault(i, (reason, anyio.current_time())))
        silent = links[500]
        for _ in range(12):  # 60 s of frames every 5 s from every link but one
            await anyio.sleep(5.0)
            for link in links:
                if link is not silent:
                    link.last_received = anyio.current_time()
        tg.cancel_scope.cancel()
    assert list(dead) == [500]
    reason, at = dead[500]
    assert reason == "Heartbeat timeout detected" and at - silent.last_received == pytest.approx(15.0)
    assert list(heartbeat_warnings(caplog)) == ["Heartbeat timeout: 15.0s > 15s (node n500)"]


@pytest.mark.timeout(10)
async def test_links_that_end_are_never_declared_dead_and_do_not_pile_up() -> None:
    watch = SilenceWatch()
    dead: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        for _ in range(10_000):  # peers that come and go, far faster than the timeout
            stop = watch.watch(make_link(timeout=0.2), dead.append)
            stop()
        assert len(watch._heap) <= 200  # compacted as they end, not kept for a timeout each
        assert watch.watched == 0
        await anyio.sleep(0.4)
        tg.cancel_scope.cancel()
    assert dead == []
