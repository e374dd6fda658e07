"""The stop deadline of DeadlineContainer, with a service whose stop hangs
(no broker)."""
import eventlet
from nameko.containers import get_container_cls
from nameko.extensions import DependencyProvider

from services.platform.container import DeadlineContainer


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
