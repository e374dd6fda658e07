"""DeadlineContainer: the stop deadline, with a service whose stop hangs,
and its lean workers (no broker)."""
import gc
import logging

import eventlet
import pytest
from nameko.containers import get_container_cls
from nameko.exceptions import ConfigurationError
from nameko.extensions import DependencyProvider
from nameko.testing.services import entrypoint_hook, entrypoint_waiter
from nameko.timer import timer

from services.platform import container as container_module
from services.platform.container import (
    RABBITMQ,
    REDIS,
    WAIT_LOG_INTERVAL,
    DeadlineContainer,
    done_waiting,
    health,
    waiting_for,
)


class Hangs(DependencyProvider):
    """A dependency whose stop takes ``seconds`` (a consumer waiting for a
    broker that is away, say)."""

    seconds = 0.0

    def stop(self):
        eventlet.sleep(self.seconds)


class Service:
    name = "slow"
    dep = Hangs()


def make(stop_takes, deadline=0.05):
    Hangs.seconds = stop_takes
    container = DeadlineContainer(Service, {"AMQP_URI": "memory://"})
    container.stop_deadline = deadline
    container.start()
    return container


def test_config_selects_the_container():
    assert get_container_cls({
        "SERVICE_CONTAINER_CLS": "services.platform.container.DeadlineContainer",
    }) is DeadlineContainer


def test_a_stop_that_hangs_is_cut_short(caplog):
    container = make(stop_takes=10)
    # as `nameko run` on SIGTERM: stop in a thread, wait for the container
    stopping = eventlet.spawn(container.stop)
    with eventlet.Timeout(2):
        container.wait()
    stopping.kill()
    assert "slow did not stop within 0.05s: killing it" in caplog.messages


def test_a_stop_that_ends_in_time_is_left_alone(caplog):
    container = make(stop_takes=0.01, deadline=0.2)
    killed = []
    container.kill = lambda *args: killed.append(args)
    with eventlet.Timeout(2):
        container.stop()
    eventlet.sleep(0.3)  # past the deadline: the timer was cancelled
    assert killed == [] and not any("killing" in m for m in caplog.messages)


class Recorder(DependencyProvider):
    """Records the worker hooks nameko calls, with what they are given."""

    def setup(self):
        self.calls = []

    def get_dependency(self, worker_ctx):
        self.calls.append(("get_dependency", worker_ctx.entrypoint.method_name))
        return self.calls

    def worker_setup(self, worker_ctx):
        self.calls.append(("worker_setup", worker_ctx.entrypoint.method_name))

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        self.calls.append(("worker_result", result,
                           exc_info and (exc_info[0], exc_info[1].args)))

    def worker_teardown(self, worker_ctx):
        self.calls.append(("worker_teardown", worker_ctx.entrypoint.method_name))


class Plain(DependencyProvider):
    """No worker hooks of its own: injected, nothing else."""

    def get_dependency(self, worker_ctx):
        return "plain"


class Expected(Exception):
    pass


class Hooked:
    name = "hooked"
    recorder = Recorder()
    plain = Plain()

    @timer(interval=3600, expected_exceptions=Expected)
    def works(self):
        self.recorder.append(("method", self.plain))
        return "done"

    @timer(interval=3600, expected_exceptions=Expected)
    def expected(self):
        raise Expected("a client's mistake")

    @timer(interval=3600)
    def bug(self):
        raise KeyError("internals")


@pytest.fixture(params=[logging.INFO, logging.DEBUG], ids=["lean", "upstream"])
def hooked(request, caplog):
    """The service's container, with nameko's log at INFO (the lean
    worker) or DEBUG (upstream's): both must behave alike."""
    caplog.set_level(request.param, logger="nameko.containers")
    container = DeadlineContainer(Hooked, {"AMQP_URI": "memory://"})
    container.start()
    recorder = next(d for d in container.dependencies if isinstance(d, Recorder))
    yield container, recorder.calls
    container.kill()


def test_a_worker_calls_every_hook_in_order(hooked):
    container, calls = hooked
    with entrypoint_hook(container, "works") as call:
        assert call() == "done"
    assert calls == [("get_dependency", "works"), ("worker_setup", "works"),
                     ("method", "plain"), ("worker_result", "done", None),
                     ("worker_teardown", "works")]


@pytest.mark.parametrize("method, level, error, message", [
    ("expected", logging.WARNING, (Expected, ("a client's mistake",)), ": a client's mistake"),
    ("bug", logging.ERROR, (KeyError, ("internals",)), ": 'internals'"),
])
def test_a_failing_worker_is_logged_as_upstream_logs_it(
        hooked, caplog, method, level, error, message):
    container, calls = hooked
    with entrypoint_waiter(container, method):
        with entrypoint_hook(container, method) as call:
            with pytest.raises(error[0]):
                call()
    assert calls == [("get_dependency", method), ("worker_setup", method),
                     ("worker_result", None, error), ("worker_teardown", method)]
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (record.name, record.levelno) == ("nameko.containers", level)
    assert record.getMessage().endswith(message)
    assert record.exc_info[0] is error[0]


def test_the_lean_worker_skips_hooks_nobody_overrides(monkeypatch, caplog):
    """The base class's no-op hooks (Plain's) are not called; at DEBUG,
    upstream's worker runs, and logs its steps."""
    base_calls = []
    for hook in ("worker_setup", "worker_result", "worker_teardown"):
        monkeypatch.setattr(DependencyProvider, hook, lambda self, *args, hook=hook:
                            base_calls.append((type(self).__name__, hook)))
    for level in (logging.INFO, logging.DEBUG):
        caplog.set_level(level, logger="nameko.containers")
        caplog.clear()
        del base_calls[:]
        container = DeadlineContainer(Hooked, {"AMQP_URI": "memory://"})
        container.start()
        with entrypoint_hook(container, "works") as call:
            assert call() == "done"
        container.kill()
        assert base_calls == []
        ran = [r for r in caplog.records if r.getMessage().startswith("ran worker ")]
        assert len(ran) == (1 if level == logging.DEBUG else 0)


@pytest.fixture
def gc_thresholds():
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


@pytest.mark.parametrize("setting, thresholds", [
    ({}, (20_000, 50, 100)),
    ({"GC_GEN0_THRESHOLD": 5000}, (5000, 50, 100)),
    ({"GC_GEN0_THRESHOLD": 0}, (700, 10, 10)),  # Python's own
])
def test_a_started_container_sets_the_collector(gc_thresholds, setting, thresholds):
    container = DeadlineContainer(Hooked, dict({"AMQP_URI": "memory://"}, **setting))
    container.start()
    container.kill()
    assert gc.get_threshold() == thresholds


@pytest.mark.parametrize("value", [-1, "many", 1.5, 10_000_001])
def test_a_bad_collector_setting_refuses_to_start(gc_thresholds, value):
    container = DeadlineContainer(Hooked, {"AMQP_URI": "memory://", "GC_GEN0_THRESHOLD": value})
    with pytest.raises(ConfigurationError, match="GC_GEN0_THRESHOLD"):
        container.start()
    assert gc.get_threshold() == (700, 10, 10)


def test_waits_show_on_health_and_are_logged_once_per_error(caplog, monkeypatch):
    """Two extensions wait for RabbitMQ and one for Redis: /health names
    each server once, and a wait is logged when it begins, when its error
    changes and every WAIT_LOG_INTERVAL seconds, not on every attempt."""
    now = [100.0]
    monkeypatch.setattr(container_module.time, "monotonic", lambda: now[0])
    container = DeadlineContainer(Service, {"AMQP_URI": "memory://"})
    caplog.set_level(logging.INFO, logger="services.platform.container")
    assert health(container) == {"status": "ok", "version": "1.0.0"}

    for _ in range(3):
        waiting_for(container, RABBITMQ, "events", "amqp://guest:***@mq/", OSError("refused"))
    waiting_for(container, RABBITMQ, "rpc", "amqp://guest:***@mq/", OSError("refused"))
    waiting_for(container, REDIS, "store", "redis://db/0", OSError("down"))
    assert health(container) == {"status": "waiting", "waiting_for": ["rabbitmq", "redis"],
                                 "version": "1.0.0"}
    waiting_for(container, REDIS, "store", "redis://db/0", OSError("timed out"))
    now[0] += WAIT_LOG_INTERVAL
    waiting_for(container, REDIS, "store", "redis://db/0", OSError("timed out"))
    done_waiting(container, RABBITMQ, "events", "amqp://guest:***@mq/")
    assert health(container) == {"status": "waiting", "waiting_for": ["rabbitmq", "redis"],
                                 "version": "1.0.0"}
    done_waiting(container, RABBITMQ, "rpc", "amqp://guest:***@mq/")
    done_waiting(container, REDIS, "store", "redis://db/0")
    done_waiting(container, REDIS, "store", "redis://db/0")  # not waiting: no line
    assert health(container) == {"status": "ok", "version": "1.0.0"}
    assert [record.getMessage() for record in caplog.records] == [
        "waiting for RabbitMQ at amqp://guest:***@mq/: refused",
        "waiting for RabbitMQ at amqp://guest:***@mq/: refused",
        "waiting for Redis at redis://db/0: down",
        "waiting for Redis at redis://db/0: timed out",
        "waiting for Redis at redis://db/0: timed out",
        "RabbitMQ at amqp://guest:***@mq/ reached after 30.0s",
        "RabbitMQ at amqp://guest:***@mq/ reached after 30.0s",
        "Redis at redis://db/0 reached after 30.0s",
    ]
