"""The upstream internals services/platform relies on, in one place: every
private attribute it reads or writes, every method it overrides or calls
with a given shape, every string of a wire protocol or log line it copies.
A nameko, kombu, eventlet or werkzeug upgrade that changes one of them
fails here, loudly, instead of breaking a service quietly."""
import hashlib
import inspect

import eventlet
import kombu
import pytest
from eventlet import wsgi
from eventlet.event import Event
from kombu.mixins import ConsumerMixin
from nameko import containers, rpc
from nameko.amqp.publish import Publisher
from nameko.containers import ServiceContainer, get_container_cls
from nameko.contextdata import ContextDataProvider
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider, ProviderCollector
from nameko.messaging import QueueConsumer
from nameko.standalone.events import get_event_exchange
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer, WsgiApp, parse_address
from werkzeug.wrappers import Request

from services import contracts
from services.platform import brokers
from services.platform.container import HOOKS


def params(function):
    return list(inspect.signature(function).parameters)


def source(function):
    return inspect.getsource(function)


# -- eventlet: EdgeProtocol, EdgeWsgiServer (http_server.py) ---------------

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


# -- nameko's web server and entrypoint: http_server.py, web.py -------------

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


# -- nameko's consumers: events.py -------------------------------------------

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
    # ReliableEventHandler drops a message's decoded body once it is parsed
    # (the raw body stays, for a dead letter); payload decodes it again
    assert "_decoded_cache" in kombu.message.Message.__slots__
    # DeadLetteringQueueConsumer acks a run of delivery tags at once
    assert "multiple" in params(kombu.message.Message.ack)
    assert "basic_ack(self.delivery_tag, multiple=multiple)" in source(
        kombu.message.Message.ack)
    assert "self._decoded_cache if self._decoded_cache else self.decode()" in source(
        kombu.message.Message.payload.fget)


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


# -- nameko's wire protocol: publisher.py, rpc_client.py ----------------------

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
