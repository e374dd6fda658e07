"""The upstream internals services/platform relies on, in one place: every
private attribute it reads or writes, every method it overrides or calls
with a given shape, every string of a wire protocol or log line it copies.
A nameko, kombu, amqp, eventlet, werkzeug, redis-py or nameko-redis upgrade
that changes one of them fails here, loudly, instead of breaking a service
quietly; so does installing another version than requirements.txt pins.
services/platform/UPSTREAM.md lists each behaviour changed and its guard."""
import hashlib
import http.client
import http.server
import importlib
import importlib.metadata
import inspect
import io
import re
from pathlib import Path

import amqp
import eventlet
import kombu
import kombu.exceptions
import nameko_redis
import pytest
import redis
import redis._parsers.helpers
import redis.sentinel
import yaml
from eventlet import wsgi
from eventlet.event import Event
from kombu.mixins import ConsumerMixin
from kombu.serialization import registry
from nameko import containers, rpc
from nameko.amqp.publish import Publisher
from nameko.cli.main import setup_yaml_parser
from nameko.containers import ServiceContainer, get_container_cls
from nameko.contextdata import ContextDataProvider
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider, ProviderCollector
from nameko.messaging import QueueConsumer
from nameko.standalone.events import get_event_exchange
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer, WsgiApp, parse_address
from redis._parsers.base import BaseParser
from redis._parsers.hiredis import _HiredisParser
from redis.cluster import ClusterNode, NodesManager, RedisCluster
from werkzeug.exceptions import MethodNotAllowed, RequestEntityTooLarge
from werkzeug.routing import Rule
from werkzeug.wrappers import Request

from services import contracts
from services.platform import brokers, redis_nodes
from services.platform.container import HOOKS


def params(function):
    return list(inspect.signature(function).parameters)


def source(function):
    return inspect.getsource(function)


# -- eventlet: EdgeProtocol, EdgeWsgiServer (http/protocol.py, http/server.py)

@pytest.mark.parametrize("name", [
    # overridden by EdgeProtocol
    "setup", "handle_one_request", "_read_request_line", "parse_request",
    "handle_one_response", "send_error", "get_client_address", "log_message",
    "finish",
    # called by it
    "date_time_string", "log_date_time_string",
])
def test_eventlet_protocol_methods(name):
    assert callable(getattr(HttpOnlyProtocol, name)), name
    assert issubclass(HttpOnlyProtocol, wsgi.HttpProtocol)


def test_eventlet_protocol_shapes():
    assert params(wsgi.HttpProtocol.__init__) == ["self", "conn_state", "server"]
    # conn_state[2] is the connection state the drain sets to STATE_CLOSE
    assert "self.conn_state = conn_state" in source(wsgi.HttpProtocol.__init__)
    assert "self.conn_state[2] == STATE_CLOSE" in source(wsgi.HttpProtocol)
    assert (wsgi.STATE_IDLE, wsgi.STATE_CLOSE) == ("idle", "close")
    assert params(wsgi.HttpProtocol._read_request_line) == ["self"]
    assert isinstance(wsgi.HttpProtocol.responses, dict)
    # the body EdgeProtocol reads before the application runs
    assert "'eventlet.input'" in source(wsgi.HttpProtocol.get_environ)
    # the header cap EdgeProtocol replaces in parse_request: eventlet wraps
    # rfile (keeping it as .fp) around parse_request, and restores it after
    one_request = source(wsgi.HttpProtocol.handle_one_request)
    assert "self.rfile = FileObjectForHeaders(self.rfile)" in one_request
    assert "self.rfile = orig_rfile" in one_request
    assert wsgi.FileObjectForHeaders(fp="raw").fp == "raw"
    # the request line EdgeProtocol peeks at first: a buffered reader
    assert "conn.makefile('rb', self.rbufsize)" in source(wsgi.HttpProtocol.setup)


def test_eventlet_server_shape():
    for name in ("log", "debug", "protocol", "url_length_limit", "socket_timeout"):
        assert name in params(wsgi.Server.__init__), name
    assert params(wsgi.Server.process_request) == ["self", "conn_state"]


# -- nameko's web server and entrypoint: http/server.py, web.py -----------

def test_nameko_web_server_internals():
    server = WebServer()
    for name in ("_gt", "_sock", "_serv", "_is_accepting"):
        assert hasattr(server, name), name
    for name in ("setup", "start", "stop", "kill", "run", "get_wsgi_app",
                 "unregister_provider", "context_data_from_headers"):
        assert callable(getattr(WebServer, name)), name
    assert params(WebServer.get_wsgi_server) == [
        "self", "sock", "wsgi_app", "protocol", "debug"]
    assert isinstance(WebServer.bind_addr, property)
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)


def test_nameko_wsgi_app_and_http_entrypoint():
    assert params(WsgiApp.__init__) == ["self", "server"]
    assert "self.url_map" in source(WsgiApp.__init__)
    assert params(HttpRequestHandler.__init__) == ["self", "method", "url", "kwargs"]
    assert params(HttpRequestHandler.handle_result) == [
        "self", "event", "worker_ctx", "result", "exc_info"]
    for name in ("get_url_rule", "check_signature", "handle_request",
                 "get_entrypoint_parameters", "response_from_result"):
        assert callable(getattr(HttpRequestHandler, name)), name
    # JsonHttp replaces nameko's handle_request; its shape is the same
    assert params(HttpRequestHandler.handle_request) == ["self", "request"]


def test_werkzeug_request_shallow():
    request = Request({"REQUEST_METHOD": "GET", "wsgi.input": None}, shallow=True)
    assert request.shallow is True
    request.max_content_length = 10


def test_eventlet_event_reset():
    event = Event()
    event.send(None)
    event.reset()
    assert not event.ready()


# -- nameko's container: container.py, logs.py, web.py -----------------------

def test_container_internals():
    assert get_container_cls({"SERVICE_CONTAINER_CLS": None}) is ServiceContainer
    assert "SERVICE_CONTAINER_CLS" in source(get_container_cls)
    assert "self._died = Event()" in source(ServiceContainer.__init__)
    assert params(ServiceContainer.stop) == ["self"]
    assert params(ServiceContainer.kill) == ["self", "exc_info"]
    # the order the HTTP drain relies on: entrypoints stop before workers
    # are waited for and before dependencies stop
    stop = source(ServiceContainer.stop)
    assert (stop.index("self.entrypoints.all.stop()")
            < stop.index("self._worker_pool.waitall()")
            < stop.index("self.dependencies.all.stop()"))
    # DeadlineContainer.start is upstream's, with the dependencies first
    start = source(ServiceContainer.start)
    assert "self.extensions.all.setup()" in start and "self.extensions.all.start()" in start
    container = ServiceContainer(type("S", (), {"name": "s"}), {})
    assert container.extensions == container.dependencies | container.entrypoints | (
        container.subextensions)
    # container.waiting_for keeps its dict under a name nameko does not use
    assert "waiting" not in vars(container) and not hasattr(ServiceContainer, "waiting")


def test_container_worker_steps():
    """DeadlineContainer._run_worker is upstream's, less the debug logging
    and the base class's no-op hooks: any change to these is to be read
    and copied."""
    pinned = {
        "_run_worker": "7418dcb704693677",
        "_inject_dependencies": "d83f914c10dd0be2",
        "_worker_setup": "7a70528f4a21aeb8",
        "_worker_result": "23f813014385ae29",
        "_worker_teardown": "9f84f42d916eb852",
    }
    assert {name: hashlib.sha256(source(getattr(ServiceContainer, name)).encode())
            .hexdigest()[:16] for name in pinned} == pinned
    assert [hook for hook in ("worker_setup", "worker_result", "worker_teardown")
            if callable(getattr(DependencyProvider, hook))] == list(HOOKS)


def test_container_logs_worker_errors_as_the_filter_and_web_expect():
    run = source(ServiceContainer._run_worker)
    assert "'(expected) error handling worker %s: %s'" in run
    assert "_log.exception(" in run and "'error handling worker %s: %s'" in run
    assert containers._log.name == "nameko.containers"


# -- nameko's consumers: consumers.py ----------------------------------------

def test_queue_consumer_internals():
    consumer = QueueConsumer()
    for name in ("_consumers_ready", "_pending_remove_providers", "_consumers"):
        assert hasattr(consumer, name), name
    assert isinstance(consumer._consumers_ready, Event)
    assert isinstance(consumer._pending_remove_providers, dict)
    assert isinstance(consumer._consumers, dict)
    assert params(QueueConsumer.get_consumers) == ["self", "consumer_cls", "channel"]
    # every delivery passes here, in the consume loop, in delivery order
    assert params(QueueConsumer.handle_message) == ["self", "provider", "body", "message"]
    assert "partial(self.handle_message, provider)" in source(QueueConsumer.get_consumers)
    for name in ("ack_message", "requeue_message", "unregister_provider", "stop",
                 "on_connection_error", "create_connection"):
        assert callable(getattr(QueueConsumer, name)), name
    # ResilientQueueConsumer skips QueueConsumer's unregister_provider
    assert QueueConsumer.__mro__[1:].count(ProviderCollector) == 1
    assert callable(ProviderCollector.unregister_provider)
    # kombu's mixin: the loop's stop flag, and the context manager replaced
    assert "should_stop" in dir(ConsumerMixin)
    assert callable(ConsumerMixin.establish_connection)
    # ResilientQueueConsumer.consume shortens the loop's wait for a frame
    assert "safety_interval" in params(ConsumerMixin.consume)
    assert "self.consume(" in source(ConsumerMixin.run)
    assert "consume" not in vars(QueueConsumer)


def test_kombu_connection_and_consumer_shapes():
    # ensure_connection(*args, **kwargs) passes both on to this one
    ensure = params(kombu.Connection._ensure_connection)
    assert "max_retries" in ensure and "reraise_as_library_errors" in ensure
    assert "self._ensure_connection(*args, **kwargs)" in source(
        kombu.Connection.ensure_connection)
    assert hasattr(kombu.Connection("memory://"), "recoverable_connection_errors")
    assert "on_decode_error" in params(kombu.Consumer.__init__)
    assert "confirm_timeout" in params(kombu.Producer.publish)
    assert "expiration" in source(kombu.Producer.publish)
    # amqp_layer.Link's on_return (the dead-letter replay): kombu adds it to
    # the channel's basic_return handlers, which py-amqp calls instead of
    # raising, before the publish's confirm comes
    assert "on_return" in params(kombu.Producer.__init__)
    assert "self._channel.events['basic_return'].add(self.on_return)" in source(
        kombu.Producer.revive)
    assert "handlers = self.events.get('basic_return')" in source(
        amqp.Channel._on_basic_return)
    # ReliableEventHandler drops a message's decoded body once it is parsed
    # (the raw body stays, for a dead letter); payload decodes it again
    assert "_decoded_cache" in kombu.message.Message.__slots__
    # DeadLetteringQueueConsumer acks a run of delivery tags at once
    assert "multiple" in params(kombu.message.Message.ack)
    assert "basic_ack(self.delivery_tag, multiple=multiple)" in source(
        kombu.message.Message.ack)
    assert "self._decoded_cache if self._decoded_cache else self.decode()" in source(
        kombu.message.Message.payload.fget)


def test_amqp_errors_as_the_consumers_catch_them():
    """consumers.LOST_CONNECTION (an ack or reply on a dead connection) is
    amqp's connection and channel errors, socket errors among them; the
    stall watch raises ConnectionForced from on_iteration, which kombu's
    consume loop takes for a lost connection and consumes anew; a queue of
    another type is refused with PreconditionFailed, a channel error (the
    publisher's ChannelError)."""
    assert OSError in amqp.Connection.connection_errors
    assert amqp.exceptions.ConnectionError in amqp.Connection.connection_errors
    assert amqp.Connection.channel_errors == (amqp.exceptions.ChannelError,)
    assert issubclass(amqp.exceptions.ConnectionForced, amqp.Connection.connection_errors)
    assert issubclass(amqp.exceptions.PreconditionFailed, kombu.exceptions.ChannelError)
    run = source(ConsumerMixin.run)
    assert "errors = (self.connection.connection_errors +" in run
    assert "self.connection.channel_errors)" in run
    assert "while not self.should_stop:" in run and "except errors:" in run


def test_event_handler_and_rpc_hooks():
    for cls in (EventHandler, rpc.Rpc):
        for name in ("setup", "stop", "handle_message", "unpack_message_headers"):
            assert callable(getattr(cls, name)), (cls, name)
    assert isinstance(EventHandler.queue_consumer, QueueConsumer)
    assert isinstance(rpc.Rpc.rpc_consumer, rpc.RpcConsumer)
    assert isinstance(rpc.RpcConsumer.queue_consumer, QueueConsumer)
    assert params(rpc.RpcConsumer.handle_result) == [
        "self", "message", "result", "exc_info"]
    assert ContextDataProvider.context_key is None
    assert "declare" in params(Publisher.__init__)


# -- nameko's wire protocol: amqp_layer.py, publisher.py, rpc_client.py -------

def test_exchanges():
    exchange = get_event_exchange(contracts.GATEWAY_SERVICE, {})
    assert (exchange.name, exchange.type) == (contracts.EVENTS_EXCHANGE, "topic")
    assert rpc.get_rpc_exchange({}).name == contracts.RPC_EXCHANGE


def test_rpc_wire_protocol():
    # requests: {"args", "kwargs"} routed "<service>.<method>", reply_to and
    # correlation_id; replies: {"result", "error"}
    assert "body['args']" in source(rpc.Rpc.handle_message)
    assert "body['kwargs']" in source(rpc.Rpc.handle_message)
    assert "key = '{}.{}'.format(service_name, provider.method_name)" in source(
        rpc.RpcConsumer.get_provider_for_method)
    respond = source(rpc.Responder.send_response)
    assert "payload = {'result': result, 'error': error}" in respond
    assert "self.message.properties['reply_to']" in respond
    assert "correlation_id" in respond


def test_eventlet_spawn_after_cancels():
    fired = []
    timer = eventlet.spawn_after(0.01, fired.append, 1)
    timer.cancel()
    eventlet.sleep(0.03)
    assert fired == []


def test_kombu_failover_alternates():
    """services/platform/brokers.connect relies on kombu splitting a
    ``;``-separated URI into ``alt`` and moving to the next node on each
    failed try of ensure_connection: with every node refusing, it ends on
    the last one, having tried each."""
    nodes = ["amqp://guest:guest@127.0.0.1:{}//".format(port) for port in (1, 2, 3)]
    connection = kombu.Connection(";".join(nodes), connect_timeout=1)
    assert connection.alt == nodes and connection.host == "127.0.0.1:1"
    with pytest.raises(ConnectionRefusedError):
        brokers.connect(connection)
    assert connection.host == "127.0.0.1:3"


# -- the versions: requirements.txt --------------------------------------------

GUARDED = ("nameko", "nameko-redis", "eventlet", "kombu", "amqp", "werkzeug", "redis")
REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


def pins():
    found = {}
    for line in REQUIREMENTS.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s#;]+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def test_installed_versions_are_the_pinned_ones():
    """Every guard here was written against these versions: a bump is to
    be reviewed against UPSTREAM.md, not installed by the way."""
    pinned = pins()
    assert set(GUARDED) <= set(pinned), "unpinned: {}".format(set(GUARDED) - set(pinned))
    installed = {name: importlib.metadata.version(name) for name in GUARDED}
    assert installed == {name: pinned[name] for name in GUARDED}


# -- nameko's QueueConsumer: its start, stop and kill (consumers.py) --------

def test_queue_consumer_providers_starting_and_thread():
    consumer = QueueConsumer()
    # ResilientQueueConsumer reads _providers (its queues), tests _starting
    # (check its queues once) and waits on, then kills, _gt
    assert consumer._providers == set() and consumer._starting is False
    assert consumer._gt is None
    start = source(QueueConsumer.start)
    assert "if not self._starting:" in start
    assert "self._starting = True" in start
    assert "self._gt = self.container.spawn_managed_thread(self.run)" in start
    assert "self._consumers_ready.wait()" in start
    assert "self._gt.link(self._handle_thread_exited)" in start
    # a consume loop that ends before it consumed fails the start with its error
    assert "self._consumers_ready.send_exception(exc)" in source(
        QueueConsumer._handle_thread_exited)
    # what ResilientQueueConsumer.kill repeats before it bounds the wait
    kill = source(QueueConsumer.kill)
    for line in ("if self._gt is not None and not self._gt.dead:",
                 "self._providers = set()", "self._pending_remove_providers = {}",
                 "self.should_stop = True", "self._gt.wait()"):
        assert line in kill, line
    # get_consumers makes one consumer per provider, keyed by provider
    assert "for provider in self._providers:" in source(QueueConsumer.get_consumers)
    assert "self._consumers[provider] = consumer" in source(QueueConsumer.get_consumers)
    # the stop waits for every provider to unregister
    assert "self.wait_for_providers()" in source(QueueConsumer.stop)
    assert "self._gt.wait()" in source(QueueConsumer.stop)


def test_provider_collector_and_cancel_requests_behave_as_relied_on():
    """ResilientQueueConsumer.unregister_provider puts an Event in
    _pending_remove_providers for the consume loop to send once the
    consumer is cancelled, then calls ProviderCollector's, which sends
    _last_provider_unregistered with the last provider gone."""
    consumer = QueueConsumer()
    provider, cancelled = object(), []
    consumer.register_provider(provider)
    assert consumer._providers == {provider}
    consumer._consumers[provider] = type("C", (), {"cancel": lambda self: cancelled.append(1)})()
    removed = consumer._pending_remove_providers[provider] = Event()
    consumer._cancel_consumers_if_requested()
    assert removed.ready() and cancelled == [1]
    assert consumer._consumers == {} and consumer._pending_remove_providers == {}
    consumer.on_iteration()  # no consumer left: the loop ends
    assert consumer.should_stop is True
    ProviderCollector.unregister_provider(consumer, provider)
    assert consumer._providers == set()
    assert consumer._last_provider_unregistered.ready()


# -- upstream functions copied into platform and changed ----------------------

COPIED = {
    # upstream function: (sha256 of its source, first 16; where the copy is)
    ServiceContainer.start: ("04c956912a66530e", "container.DeadlineContainer.start"),
    QueueConsumer.start: ("81a30fc044699e9a", "consumers.ResilientQueueConsumer.start"),
    QueueConsumer.unregister_provider: (
        "613f717e0e551164", "consumers.ResilientQueueConsumer.unregister_provider"),
    QueueConsumer.kill: ("bef982a090b3cc2c", "consumers.ResilientQueueConsumer.kill"),
    QueueConsumer.on_connection_error: (
        "93154c9c79e4a652", "consumers.ResilientQueueConsumer.on_connection_error"),
    ConsumerMixin.establish_connection: (
        "81f1b607c2d2fc30", "consumers.ResilientQueueConsumer.establish_connection"),
    rpc.RpcConsumer.handle_result: (
        "25b95fd9dfce82c2", "rpc.ResilientRpcConsumer.handle_result"),
    HttpRequestHandler.handle_request: ("4a686b5b8268669f", "web.JsonHttp._answer_by_worker"),
    WsgiApp.__call__: ("2909d54e61f1f9a0", "web.JsonWsgiApp.respond"),
    WebServer.run: ("f54a220ccb817633", "http.server.EdgeWebServer.run"),
    WebServer.process_request: ("db14039dd40bfd72", "http.server.EdgeWebServer._serve"),
    WebServer.stop: ("2c812bcfd906d3fb", "http.server.EdgeWebServer._stop_accepting"),
    WebServer.get_wsgi_server: (
        "040239d82b5108dc", "http.server.EdgeWebServer.get_wsgi_server"),
}


def test_copied_upstream_functions_unchanged():
    """Each of these is copied into services/platform with a change (see
    UPSTREAM.md): when upstream's changes, read it and carry the change
    into the copy before updating the pin here."""
    def name(function):
        return "{}.{}".format(function.__module__, function.__qualname__)

    got = {name(function): hashlib.sha256(source(function).encode()).hexdigest()[:16]
           for function in COPIED}
    assert got == {name(function): pin for function, (pin, _) in COPIED.items()}


def platform_attribute(path):
    """The object ``path`` (``module.Class.method`` under services.platform)
    names, or None."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(
                "services.platform." + ".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name, None)
        return found
    return None


def test_copies_are_where_upstream_md_says():
    """Each copy named in COPIED and in UPSTREAM.md's table of copies exists
    under that name: a module split or a rename that leaves the list behind
    fails here."""
    text = (Path(__file__).resolve().parents[2] / "services" / "platform"
            / "UPSTREAM.md").read_text()
    section = text.split("## Copied and modified upstream functions", 1)[1]
    section = section.split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `[^`]+` `[^`]+` \| `([\w.]+)` \|", section, re.M))
    # the table also has the copies pinned by their own guards
    assert {where for _, where in COPIED.values()} - listed == set()
    assert [where for where in sorted(listed) if platform_attribute(where) is None] == []


# -- eventlet: a stream's writes (web.event_stream) ----------------------------

def test_eventlet_minimum_write_chunk_size_is_read_per_request():
    answer = source(wsgi.HttpProtocol.handle_one_response)
    # read from the request's environ after the application has returned,
    # before its body is iterated (web.event_stream sets it in the worker)
    assert (answer.index("result = self.application(self.environ, start_response)")
            < answer.index("'eventlet.minimum_write_chunk_size', self.minimum_chunk_size")
            < answer.index("for data in result:"))
    assert wsgi.MINIMUM_CHUNK_SIZE == 4096


def test_eventlet_writes_each_chunk_at_once_with_zero_minimum():
    """web.event_stream sets it to 0 so that each event leaves at once;
    eventlet otherwise gathers 4 KiB before writing. The second chunk is
    held back until the first has arrived, so only an immediate write of
    the first lets this end."""
    release = Event()

    def chunks():
        yield b"first"
        release.wait()
        yield b"second"

    def app(environ, start_response):
        # read once, when the application returns: set before that
        environ["eventlet.minimum_write_chunk_size"] = 0
        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks()

    sock = eventlet.listen(("127.0.0.1", 0))
    server = eventlet.spawn(wsgi.server, sock, app, log_output=False)
    client = eventlet.connect(sock.getsockname())
    try:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        with eventlet.Timeout(5):
            while b"first" not in received:
                received += client.recv(4096)
        assert b"second" not in received
        release.send()
    finally:
        client.close()
        server.kill()
        sock.close()


def test_eventlet_logs_as_escaping_log_expects():
    """http.access_log.EscapingLog takes eventlet's traceback of an answer it
    could not write (logged at info, while the exception is handled), and
    EdgeProtocol.get_client_address names the client of each access line."""
    answer = source(wsgi.HttpProtocol.handle_one_response)
    assert "tb = traceback.format_exc()" in answer
    assert "self.server.log.info(tb)" in answer
    assert "client_host, client_port = self.get_client_address()" in answer
    assert wsgi.addr_to_host_port(("10.0.0.1", 5)) == ("10.0.0.1", 5)
    # the listen socket nameko makes, whose backlog EdgeWebServer raises
    assert "self._sock = eventlet.listen(self.bind_addr)" in source(WebServer.start)
    assert inspect.signature(eventlet.listen).parameters["backlog"].default == 50


def test_header_reading_as_header_budget_expects():
    """_HeaderBudget replaces rfile for parse_request: http.client reads
    each header line with readline(limit)."""
    assert "fp.readline(_MAXLINE + 1)" in source(http.client._read_headers)
    # and EdgeProtocol._check_head reads what parse_request leaves
    parse = source(http.server.BaseHTTPRequestHandler.parse_request)
    assert "self.headers = http.client.parse_headers(self.rfile," in parse
    assert "self.request_version = version" in parse
    assert "self.raw_requestline = self._read_request_line()" in source(
        wsgi.HttpProtocol.handle_one_request)
    # _check_framing strips what email leaves after a value
    headers = http.client.parse_headers(io.BytesIO(b"Content-Length:  5 \t\r\n\r\n"))
    assert headers.get_all("Content-Length") == ["5 \t"]
    assert headers.get_all("Host") is None


# -- nameko's config loader: services/settings.py, harness, scripts ------------

def test_setup_yaml_parser(monkeypatch):
    """settings.read_config (and the harness, and scripts/servers.py) read
    config.yml as nameko run does; NAMEKO-FACTS' rules of substitution."""
    setup_yaml_parser()
    monkeypatch.setenv("UPSTREAM_GUARD_N", "0010")
    monkeypatch.delenv("UPSTREAM_GUARD_UNSET", raising=False)
    loaded = yaml.safe_load(
        "a: ${UPSTREAM_GUARD_N:1}\n"
        "b: ${UPSTREAM_GUARD_UNSET:7}\n"
        "c: ${UPSTREAM_GUARD_UNSET}\n"
        "d: !raw_env_var \"${UPSTREAM_GUARD_N}\"\n"
        "e: !env_var \"x-${UPSTREAM_GUARD_UNSET:y}\"\n")
    assert loaded == {"a": 8, "b": 7, "c": None, "d": "0010", "e": "x-y"}


# -- nameko's RPC responder: rpc.JsonFallbackResponder ----------------------------

def test_responder_answers_in_the_request_content_type():
    send = source(rpc.Responder.send_response)
    assert "content_type = self.message.properties['content_type']" in send
    assert "serializer = kombu.serialization.registry.type_to_name[content_type]" in send
    assert registry.type_to_name.get("application/json") == "json"
    assert registry.type_to_name.get(None) is None
    assert params(rpc.Responder.__init__) == [
        "self", "amqp_uri", "exchange", "serializer", "message", "ssl", "login_method"]


# -- kombu: a raw body past its decoding (consumers.DeadLetteringQueueConsumer) -

def test_kombu_on_message_skips_decoding():
    receive = source(kombu.Consumer._receive_callback)
    assert "decoded = None if on_m else message.decode()" in receive
    assert "return on_m(message) if on_m else self.receive(decoded, message)" in receive
    # and a body that is not what its content type says reaches on_message
    got = []
    with kombu.Connection("memory://") as connection:
        queue = kombu.Queue("upstream-guard", kombu.Exchange("upstream-guard"),
                            routing_key="k")
        kombu.Producer(connection.channel()).publish(
            b"{not json", exchange=queue.exchange, routing_key="k",
            content_type="application/json", content_encoding="utf-8",
            declare=[queue])
        with kombu.Consumer(connection, queues=[queue], accept=["json"],
                            on_message=got.append):
            connection.drain_events(timeout=5)
    assert [message.body for message in got] == [b"{not json"]
    assert got[0].content_type == "application/json"


# -- werkzeug: web.py -----------------------------------------------------------

def test_werkzeug_as_web_expects():
    # JsonHttp.get_url_rule drops the HEAD werkzeug adds to every GET rule
    assert Rule("/x", methods=["GET"]).methods == {"GET", "HEAD"}
    # response_for_http_exception lists the methods of a 405 in Allow
    assert MethodNotAllowed(valid_methods=["GET"]).valid_methods == ["GET"]
    # JsonWsgiApp sets the body limit per request (HTTP_MAX_BODY_BYTES)
    environ = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": "20",
               "CONTENT_TYPE": "application/octet-stream",
               "wsgi.input": io.BytesIO(b"x" * 20)}
    request = Request(environ, shallow=True)
    request.max_content_length = 10
    request.shallow = False
    with pytest.raises(RequestEntityTooLarge):
        request.get_data()


# -- nameko-redis: services/votes/store/provider.py VoteStore -------------------

def test_nameko_redis_provider_internals():
    """VoteStore subclasses nameko-redis's Redis: it reads ``redis_uri``
    (set by setup from REDIS_URIS) and ``options``, sets ``client`` itself
    in start, and closes it in stop and kill, which upstream does not (it
    drops the reference, leaving the pool's sockets open)."""
    provider = nameko_redis.Redis("votes", socket_timeout=2)
    assert provider.key == "votes" and provider.client is None
    assert provider.options == {"decode_responses": True, "socket_timeout": 2}
    assert nameko_redis.REDIS_URIS_KEY == "REDIS_URIS"
    provider.container = type("Container", (), {
        "config": {"REDIS_URIS": {"votes": "redis://127.0.0.1:1/0"}}})()
    provider.setup()
    assert provider.redis_uri == "redis://127.0.0.1:1/0"
    for method in (nameko_redis.Redis.stop, nameko_redis.Redis.kill):
        assert "self.client = None" in source(method)
        assert "close" not in source(method)
    assert "self.client" in source(nameko_redis.Redis.get_dependency)


# -- redis-py: services/platform/redis_nodes.py, services/votes/store ------------

def test_redis_cluster_internals():
    """WriteRouter routes each command itself: the slot of its key, the
    master of that slot from the client's slot map, that master's own
    client; it rereads the map on MOVED and follows ASK to a named node."""
    assert "self.nodes_manager = NodesManager(" in source(RedisCluster.__init__)
    assert params(NodesManager.get_node_from_slot)[:2] == ["self", "slot"]
    assert params(NodesManager.get_node)[:4] == ["self", "host", "port", "node_name"]
    assert all(parameter.default is not inspect.Parameter.empty
               for parameter in list(inspect.signature(
                   NodesManager.initialize).parameters.values())[1:])
    assert params(RedisCluster.keyslot) == ["self", "key"]
    assert params(RedisCluster.get_redis_connection) == ["self", "node"]
    assert params(RedisCluster.get_primaries) == ["self"]
    assert isinstance(inspect.getattr_static(RedisCluster, "from_url"), classmethod)
    for name in ("register_script", "pipeline", "close", "info"):
        assert callable(getattr(RedisCluster, name)), name
    assert ClusterNode("127.0.0.1", 7001).name == "127.0.0.1:7001"
    assert redis.cluster.key_slot(b"{post}:a") == redis.cluster.key_slot(b"post")


def test_redis_error_replies_as_classified():
    """store_error_kind and WriteRouter read the class redis-py gives a
    reply, its status_code, and ASK's target; hiredis parses through the
    same parse_error."""
    parse = BaseParser.parse_error
    assert (type(parse("OOM no memory")), parse("OOM no memory").status_code) == (
        redis.exceptions.OutOfMemoryError, "OOM")
    assert type(parse("NOSCRIPT No matching script")) is redis.exceptions.NoScriptError
    moved, ask = parse("MOVED 3999 127.0.0.1:6381"), parse("ASK 3999 127.0.0.1:6382")
    assert type(moved) is redis.exceptions.MovedError
    assert issubclass(redis.exceptions.MovedError, redis.exceptions.AskError)
    assert (moved.host, moved.port, ask.host, ask.port) == (
        "127.0.0.1", 6381, "127.0.0.1", 6382)
    # codes redis-py has no class for stay in the message
    other = parse("MISCONF cannot persist")
    assert type(other) is redis.ResponseError and other.args == ("MISCONF cannot persist",)
    assert redis.utils.HIREDIS_AVAILABLE
    assert '"replyError": self.parse_error' in source(_HiredisParser)


def test_redis_pipeline_replies_as_write_router_reads_them(single_redis_uri):
    """One node's commands in a pipeline without a transaction: errors come
    back in place (raise_on_error=False), NOSCRIPT as NoScriptError, SET
    ... GET parsed with the ``get`` option, WAIT last with its count."""
    client = redis_nodes.connect(single_redis_uri, decode_responses=True)
    try:
        assert type(client) is redis.Redis
        with client.pipeline(transaction=False) as pipe:
            pipe.execute_command("SET", "k", "1", "NX", "GET", get=True)
            pipe.execute_command("SET", "k", "2", "NX", "GET", get=True)
            pipe.execute_command("EVALSHA", "0" * 40, 0)
            pipe.execute_command("HSET", "k", "f", "v")
            pipe.execute_command("WAIT", 0, 10)
            got = pipe.execute(raise_on_error=False)
        assert got[:2] == [None, "1"] and got[4] == 0
        assert type(got[2]) is redis.exceptions.NoScriptError
        assert type(got[3]) is redis.ResponseError and got[3].args[0].startswith("WRONGTYPE")
    finally:
        client.close()


def test_redis_sentinel_and_replication_info():
    """redis_nodes.sentinel_master: Sentinel's master_for makes a client of
    our class (SentinelMaster, whose close also closes the sentinels, which
    Sentinel.close leaves to the caller); replicas_in_sync reads each
    replica of INFO replication as a dict with its state."""
    assert params(redis.sentinel.Sentinel.__init__)[:4] == [
        "self", "sentinels", "min_other_sentinels", "sentinel_kwargs"]
    assert params(redis.sentinel.Sentinel.master_for)[:3] == [
        "self", "service_name", "redis_class"]
    assert "for sentinel in self.sentinels:" in source(redis.sentinel.Sentinel.close)
    assert "are not closed here" in source(redis.sentinel.Sentinel.close)
    # no master during a failover: a connection error, retried by the store
    assert issubclass(redis.sentinel.MasterNotFoundError, redis.ConnectionError)
    info = redis._parsers.helpers.parse_info(
        "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n"
        "slave0:ip=127.0.0.1,port=6380,state=online,offset=1,lag=0\r\n")
    assert info["role"] == "master"
    assert info["slave0"]["state"] == "online"


def test_upstream_md_names_every_guard_and_only_guards():
    """services/platform/UPSTREAM.md lists each behaviour with its guard
    here: a guard renamed, removed or added without the list fails."""
    text = (Path(__file__).resolve().parents[2] / "services" / "platform"
            / "UPSTREAM.md").read_text()
    named = set(re.findall(r"::(test_\w+)", text))
    guards = {name for name in globals() if name.startswith("test_")}
    guards.discard("test_upstream_md_names_every_guard_and_only_guards")
    assert named - guards == set(), "named in UPSTREAM.md, not a guard"
    assert guards - named == set(), "a guard UPSTREAM.md does not name"
