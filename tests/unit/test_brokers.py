"""services/platform/brokers.py with no broker: the queue type setting,
declaring with a type mismatch, trying each node of a failover URI (real
kombu Connections whose socket-level connect is faked), and redaction."""
import amqp
import kombu
import kombu.utils.functional
import pytest
from kombu import Exchange, Queue
from nameko.exceptions import ConfigurationError

from services import contracts
from services.platform import brokers

NODES = ["amqp://guest:guest@node{}:5672/votes".format(n) for n in (1, 2, 3)]
MISMATCH_TEXT = (
    "Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg "
    "'x-queue-type' for queue 'votes' in vhost 'v': received the value "
    "'quorum' of type 'longstr' but current is none")


def refusal(text):
    return amqp.exceptions.PreconditionFailed(text.split(": (406) ")[1], (50, 10))


# --- the queue type --------------------------------------------------------

@pytest.mark.parametrize("config, expected", [
    ({}, "classic"),
    ({"AMQP_QUEUE_TYPE": None}, "classic"),
    ({"AMQP_QUEUE_TYPE": ""}, "classic"),
    ({"AMQP_QUEUE_TYPE": "classic"}, "classic"),
    ({"AMQP_QUEUE_TYPE": "quorum"}, "quorum"),
])
def test_queue_type(config, expected):
    assert brokers.queue_type(config) == expected


@pytest.mark.parametrize("value", ["Quorum", "stream", "mirrored", 1])
def test_an_unknown_queue_type_is_a_configuration_error(value):
    with pytest.raises(ConfigurationError) as raised:
        brokers.queue_type({"AMQP_QUEUE_TYPE": value})
    assert str(raised.value) == (
        "AMQP_QUEUE_TYPE must be one of classic, quorum (got {!r})".format(value))


@pytest.mark.parametrize("queue_type, arguments", [
    ("classic", {}),
    ("quorum", {"x-queue-type": "quorum"}),
])
def test_queue_arguments(queue_type, arguments):
    assert brokers.queue_arguments({"AMQP_QUEUE_TYPE": queue_type}) == arguments


def test_typed_copies_the_queue_and_keeps_its_other_arguments():
    queue = Queue("votes", Exchange("events", type="topic"), routing_key="vote_cast",
                  durable=True,
                  queue_arguments={"x-dead-letter-exchange": "votes.dead-letter"})
    quorum = brokers.typed(queue, {"AMQP_QUEUE_TYPE": "quorum"})
    classic = brokers.typed(queue, {})
    assert quorum is not queue and classic is not queue
    assert quorum.queue_arguments == {"x-dead-letter-exchange": "votes.dead-letter",
                                      "x-queue-type": "quorum"}
    assert classic.queue_arguments == {"x-dead-letter-exchange": "votes.dead-letter"}
    assert queue.queue_arguments == {"x-dead-letter-exchange": "votes.dead-letter"}
    assert (quorum.name, quorum.routing_key, quorum.durable) == (
        "votes", "vote_cast", True)


def test_typed_queue_without_arguments():
    quorum = brokers.typed(Queue(contracts.RPC_QUEUE), {"AMQP_QUEUE_TYPE": "quorum"})
    assert quorum.queue_arguments == {"x-queue-type": "quorum"}
    assert brokers.typed(Queue(contracts.RPC_QUEUE), {}).queue_arguments == {}


# --- declaring -------------------------------------------------------------

class FakeEntity:
    """A kombu entity whose declare() records itself, or raises."""

    def __init__(self, name, declared, error=None):
        self.name = name
        self.declared = declared
        self.error = error
        self.channel = None

    def bind(self, channel):
        self.channel = channel
        return self

    def declare(self):
        if self.error is not None:
            raise self.error
        self.declared.append((self.name, self.channel))


def test_declare_declares_each_entity_on_the_channel_in_order():
    declared = []
    brokers.declare([FakeEntity(name, declared) for name in ("a", "b", "c")],
                    "channel", "quorum")
    assert declared == [("a", "channel"), ("b", "channel"), ("c", "channel")]


def test_declare_turns_a_type_refusal_into_queue_type_mismatch():
    declared = []
    error = refusal(MISMATCH_TEXT)
    entities = [FakeEntity("votes.dead-letter", declared),
                FakeEntity("votes", declared, error),
                FakeEntity(contracts.RPC_QUEUE, declared)]
    with pytest.raises(brokers.QueueTypeMismatch) as raised:
        brokers.declare(entities, "channel", "quorum")
    assert str(raised.value) == (
        "queue 'votes' exists on the broker as another type than "
        "AMQP_QUEUE_TYPE=quorum: set it back. To change its type, drain it "
        "and declare it again as the new type: README, 'Moving a queue to "
        "another type'. (RabbitMQ: {})".format(MISMATCH_TEXT))
    assert raised.value.__cause__ is error
    assert isinstance(raised.value, ConfigurationError)
    assert declared == [("votes.dead-letter", "channel")]  # none after it


def test_declare_reraises_other_refusals_as_they_are():
    text = ("Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg "
            "'durable' for queue 'votes' in vhost 'v': received 'true' but "
            "current is 'false'")
    error = refusal(text)
    with pytest.raises(amqp.exceptions.PreconditionFailed) as raised:
        brokers.declare([FakeEntity("votes", [], error)], "channel", "classic")
    assert raised.value is error


def test_declare_lets_other_errors_through():
    error = ConnectionResetError("gone")
    with pytest.raises(ConnectionResetError) as raised:
        brokers.declare([FakeEntity("votes", [], error)], "channel")
    assert raised.value is error


def test_mismatch_without_a_configured_type():
    problem = brokers.mismatch(refusal(MISMATCH_TEXT), "votes")
    assert str(problem) == (
        "queue 'votes' exists on the broker as another type than "
        "AMQP_QUEUE_TYPE=?: align the configuration. To change its type, "
        "drain it and declare it again as the new type: README, 'Moving a "
        "queue to another type'. (RabbitMQ: {})".format(MISMATCH_TEXT))


def test_mismatch_is_none_for_other_errors():
    assert brokers.mismatch(refusal(
        "Queue.declare: (406) PRECONDITION_FAILED - inequivalent arg "
        "'x-max-length' for queue 'votes'"), "votes", "quorum") is None
    assert brokers.mismatch(ConnectionResetError("x-queue"), "votes") is None


# --- trying each node ------------------------------------------------------

class FakeAmqpConnection:
    """What a transport returns once connected."""
    connected = True

    def __init__(self, host):
        self.host = host

    def close(self):
        self.connected = False

    collect = close


@pytest.fixture
def nodes(monkeypatch):
    """``make(uri, live)``: a kombu Connection to ``uri`` where only the
    hosts in ``live`` accept; ``tries`` lists every host tried, in order.
    kombu must not sleep between tries."""
    tries = []
    sleeps = []
    monkeypatch.setattr(kombu.utils.functional, "sleep", sleeps.append)

    def make(uri, live=()):
        connection = kombu.Connection(uri, connect_timeout=1)

        def establish():
            tries.append(connection.host)
            if connection.host in live:
                return FakeAmqpConnection(connection.host)
            raise ConnectionRefusedError(111, "refused by " + connection.host)
        monkeypatch.setattr(connection, "_establish_connection", establish)
        return connection

    yield make, tries
    assert sleeps == []


def test_a_failover_uri_gives_kombu_every_node_in_order():
    connection = kombu.Connection(";".join(NODES))
    assert connection.alt == NODES
    assert connection.host == "node1:5672"
    assert connection.virtual_host == "votes"


def test_connect_stays_on_the_first_node_when_it_answers(nodes):
    make, tries = nodes
    connection = make(";".join(NODES), live={"node1:5672", "node2:5672"})
    assert brokers.connect(connection) is connection
    assert tries == ["node1:5672"]
    assert connection.connection.host == "node1:5672"


def test_connect_tries_each_node_in_turn_until_one_answers(nodes):
    make, tries = nodes
    connection = make(";".join(NODES), live={"node3:5672"})
    brokers.connect(connection)
    assert tries == ["node1:5672", "node2:5672", "node3:5672"]
    assert connection.host == "node3:5672"
    assert connection.connection.host == "node3:5672"


def test_connect_starts_from_the_node_it_is_at(nodes):
    make, tries = nodes
    connection = make(";".join(NODES), live={"node1:5672"})
    connection.maybe_switch_next()  # as after a lost connection to node1
    connection.maybe_switch_next()
    brokers.connect(connection)
    assert tries == ["node3:5672", "node1:5672"]


def test_connect_raises_the_last_nodes_error_when_none_answers(nodes):
    make, tries = nodes
    connection = make(";".join(NODES))
    with pytest.raises(ConnectionRefusedError) as raised:
        brokers.connect(connection)
    assert str(raised.value) == "[Errno 111] refused by node3:5672"
    assert tries == ["node1:5672", "node2:5672", "node3:5672"]  # each once


def test_connect_to_a_single_node_tries_it_once(nodes):
    make, tries = nodes
    connection = make(NODES[0])
    with pytest.raises(ConnectionRefusedError):
        brokers.connect(connection)
    assert tries == ["node1:5672"]


# --- redaction -------------------------------------------------------------

@pytest.mark.parametrize("uri, redacted", [
    ("amqp://guest:guest@rabbit:5672/", "amqp://guest:***@rabbit:5672/"),
    ("amqp://user:p%40ss@rabbit:5672/votes", "amqp://user:***@rabbit:5672/votes"),
    ("amqp://rabbit:5672/", "amqp://rabbit:5672/"),
    (";".join(NODES), ";".join(n.replace("guest:guest", "guest:***") for n in NODES)),
    ("amqp://a:x@n1:5672/;amqp://n2:5672/", "amqp://a:***@n1:5672/;amqp://n2:5672/"),
])
def test_redact(uri, redacted):
    assert brokers.redact(uri) == redacted
