"""DeadLetteringQueueConsumer acks the messages whose workers end together
with one basic_ack(multiple=True), and never a message still in work."""
import eventlet
import kombu
import pytest

from services.platform.consumers import DeadLetteringQueueConsumer

PROVIDER = object()  # the entrypoint a message is for

class FakeChannel:
    """Records basic_ack calls; may yield inside one, as a socket write can."""

    no_ack_consumers = None

    def __init__(self, yield_in_ack=False):
        self.connection = object()
        self.acks = []
        self.yield_in_ack = yield_in_ack

    def basic_ack(self, delivery_tag, multiple=False):
        if self.yield_in_ack:
            eventlet.sleep(0)
        self.acks.append((delivery_tag, multiple))


@pytest.fixture
def consumer():
    return DeadLetteringQueueConsumer()


def deliver(consumer, channel, tags):
    consumer._channel, consumer._unacked = channel, {}
    messages = {}
    for tag in tags:
        messages[tag] = kombu.Message(body=b"{}", delivery_tag=tag, channel=channel,
                                      delivery_info={"routing_key": "r"})
        consumer._delivered(PROVIDER, messages[tag])
    return messages


def end_together(consumer, messages):
    """Each message's worker acks it, all in the same turn of the hub."""
    threads = [eventlet.spawn(consumer.ack_message, m) for m in messages]
    for thread in threads:
        thread.wait()


def test_workers_that_end_together_ack_one_run(consumer):
    channel = FakeChannel()
    messages = deliver(consumer, channel, range(1, 6))
    end_together(consumer, [messages[t] for t in (3, 1, 2, 5)])
    # 4 is still in its worker: 1-3 in one frame, 5 alone, 4 not at all
    assert channel.acks == [(3, True), (5, False)]
    assert list(consumer._unacked) == [4]
    end_together(consumer, [messages[4]])
    assert channel.acks == [(3, True), (5, False), (4, False)]
    assert consumer._unacked == {}


def test_a_lone_ack_is_not_multiple(consumer):
    channel = FakeChannel()
    messages = deliver(consumer, channel, [7])
    end_together(consumer, [messages[7]])
    assert channel.acks == [(7, False)]


def test_acks_that_arrive_while_an_ack_is_sent_are_sent_too(consumer):
    channel = FakeChannel(yield_in_ack=True)
    messages = deliver(consumer, channel, range(1, 5))

    def late():
        eventlet.sleep(0)
        eventlet.sleep(0)
        consumer.ack_message(messages[3])
        consumer.ack_message(messages[4])

    thread = eventlet.spawn(late)
    end_together(consumer, [messages[1], messages[2]])
    thread.wait()
    assert consumer._unacked == {}
    # every tag acked exactly once, by itself or by a run
    covered = set()
    last = 0
    for tag, multiple in channel.acks:
        run = set(range(last + 1, tag + 1)) if multiple else {tag}
        assert not run & covered
        covered |= run
        last = max(last, tag)
    assert covered == {1, 2, 3, 4}


def test_a_requeued_message_leaves_the_run(consumer):
    channel = FakeChannel()
    channel.basic_reject = lambda tag, requeue: channel.acks.append(("reject", tag))
    messages = deliver(consumer, channel, range(1, 4))
    consumer.requeue_message(messages[2])
    end_together(consumer, [messages[1], messages[3]])
    assert channel.acks == [("reject", 2), (3, True)]


def test_a_message_of_an_old_channel_is_acked_alone(consumer):
    old, new = FakeChannel(), FakeChannel()
    stale = deliver(consumer, old, [1])[1]
    messages = deliver(consumer, new, [1, 2])
    end_together(consumer, [stale, messages[1]])
    assert old.acks == [(1, False)]
    assert new.acks == [(1, False)]
    assert list(consumer._unacked) == [2]


def test_a_batch_acks_its_messages_at_once_in_runs(consumer):
    channel = FakeChannel()
    messages = deliver(consumer, channel, range(1, 7))
    untracked = kombu.Message(body=b"{}", delivery_tag=1, channel=FakeChannel(),
                              delivery_info={"routing_key": "r"})
    # one batch: 1, 2 and 4 done (3 is in another batch), and an old
    # channel's message, acked alone on its channel
    consumer.ack_messages([messages[4], messages[1], messages[2], untracked])
    assert channel.acks == [(2, True), (4, False)]
    assert untracked.channel.acks == [(1, False)]
    consumer.ack_messages([messages[3], messages[5], messages[6]])
    assert channel.acks == [(2, True), (4, False), (6, True)]
    assert consumer._unacked == {}
