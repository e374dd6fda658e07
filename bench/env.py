"""What the bench starts, and takes down again whatever happens.

Everything made is recorded in an ``Environment`` as it is made, and
``close()`` undoes it in reverse: service processes (SIGTERM, then SIGKILL),
the private Redis server (or the flushed database), the RabbitMQ vhost, the
temporary folder. ``close()`` is safe to call twice and from a signal. The
processes, vhosts and Redis server are those of the tests (``harness``).
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from harness import rabbit
from harness.process import Process, free_port, write_config
from harness.redis_server import RedisServer

AMQP_HOST = os.environ.get("BENCH_AMQP_HOST", "127.0.0.1:5672")
# only used when no redis-server binary is there to start a private one
SHARED_REDIS = os.environ.get("BENCH_SHARED_REDIS", "redis://127.0.0.1:6379/15")
# AOF every second, as docker-compose.yml runs it; LATENCY LATEST and the
# slow log then name any stall of 10 ms or more
REDIS_OPTIONS = ("--appendonly", "yes", "--appendfsync", "everysec",
                 "--latency-monitor-threshold", "10", "--slowlog-log-slower-than", "10000")


# wrk is one client address standing for many clients: the read limit per
# client address would measure itself, not the services
BENCH_SETTINGS = {"RATE_LIMIT_READS_PER_ADDRESS": 0}


class SetupError(Exception):
    pass


def ensure_wrk():
    """wrk from Debian, installed with apt-get when missing."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SetupError("wrk is missing: apt-get install wrk")
    print("installing wrk with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["apt-get", "install", "-y", "-q", "wrk"],
                 ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "wrk"]):
        done = subprocess.run(args, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=600)
        if args[1] == "install" and done.returncode == 0:
            break
    path = shutil.which("wrk")
    if not path:
        raise SetupError("could not install wrk with apt-get")
    return path


class Environment:

    def __init__(self, config_path):
        self.config_path = config_path
        self.tmp = Path(tempfile.mkdtemp(prefix="vote-bench-"))
        self.vhosts = rabbit.VhostPool(prefix="bench", batch=1)
        self.vhost = self.amqp_uri = self.redis_uri = None
        self.redis_server = None
        self.services = {}  # name -> Process
        self.web_ports = {}  # name -> WEB_SERVER_ADDRESS port
        self.amqp_uris = {}  # name -> its AMQP_URI
        self.peak_kb = {}   # name -> peak RSS of its processes so far
        self._closed = False
        self.failed = False

    def make_vhost(self):
        self.vhost = self.vhosts.take()
        self.amqp_uri = rabbit.amqp_uri(AMQP_HOST, self.vhost)

    def queue_depth(self, name):
        """(ready messages, consumers); (0, 0) if no such queue."""
        return rabbit.queue_state(self.amqp_uri, name)

    def start_redis(self):
        """A private redis-server, so that nothing else shares its memory
        or CPU; without the binary, database 15 of the local server,
        flushed."""
        if shutil.which("redis-server") is None:
            self.redis_uri = SHARED_REDIS
            self.redis().flushdb()
            return
        self.redis_server = RedisServer(self.tmp, *REDIS_OPTIONS)
        self.redis_uri = self.redis_server.uri
        self.redis_server.start()

    def redis(self):
        return redis.Redis.from_url(self.redis_uri, decode_responses=True)

    @property
    def redis_pid(self):
        return self.redis_server.pid if self.redis_server else None

    def start_service(self, name, module, http=False, amqp_uri=None, settings=None):
        """Start ``nameko run module`` (again, if it ran before), logging
        only warnings: the access lines would cost the services time.
        ``amqp_uri``: another broker than the run's vhost."""
        service = self.services.get(name)
        if service is None:
            port = free_port()
            self.amqp_uris[name] = amqp_uri or self.amqp_uri
            config = self._write_config(name, port, settings)
            service = Process.nameko(name, module, config, self.tmp / (name + ".log"),
                                     port=port if http else None)
            self.services[name] = service
        return service.start()

    def _write_config(self, name, port, settings=None):
        self.web_ports[name] = port
        return write_config(self.tmp / (name + ".yml"), self.amqp_uris[name],
                            self.redis_uri, port, base=self.config_path,
                            log_level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                            settings={**BENCH_SETTINGS, **(settings or {})})

    def restart_service(self, name, **settings):
        """Stop the service and start it again, on the same port, with
        these settings over the config's (none: the config as it is)."""
        self.stop_service(name)
        self._write_config(name, self.web_ports[name], settings)
        return self.services[name].start()

    def stop_service(self, name):
        self.sample_memory()
        self.services[name].stop()

    def url(self, name, path=""):
        return "http://127.0.0.1:{}{}".format(self.services[name].port, path)

    def sample_memory(self):
        for name, service in self.services.items():
            self.peak_kb[name] = max(self.peak_kb.get(name, 0),
                                     service.memory_kb() or 0)

    def close(self):
        if self._closed:
            return
        self._closed = True
        # no second Ctrl-C half way through the clean-up
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        problems = []
        try:
            self.sample_memory()
            for service in reversed(list(self.services.values())):
                try:
                    service.stop()
                except Exception as exc:
                    problems.append("stopping {}: {}".format(service.label, exc))
            try:
                if self.redis_server is not None:
                    self.redis_server.process.stop()
                elif self.redis_uri:
                    self.redis().flushdb()
            except Exception as exc:
                problems.append("stopping or flushing {}: {}".format(self.redis_uri, exc))
            # a broker being restarted by someone refuses for a while
            problems.append(self.vhosts.close(patience=60))
            shutil.rmtree(self.tmp / "redis", ignore_errors=True)
            if self.failed:
                print("service logs kept in {}".format(self.tmp), file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        for problem in filter(None, problems):
            print("clean-up: " + problem, file=sys.stderr)
