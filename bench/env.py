"""What the bench starts, and takes down again whatever happens.

Everything made is recorded in an ``Environment`` as it is made, and
``close()`` undoes it in reverse: service processes (SIGTERM, then SIGKILL),
the private Redis server (or the flushed database), the RabbitMQ vhost, the
temporary folder. ``close()`` is safe to call twice and from a signal.
"""
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import amqp
import redis

from services import contracts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
AMQP_HOST = os.environ.get("BENCH_AMQP_HOST", "127.0.0.1:5672")
# only used when no redis-server binary is there to start a private one
SHARED_REDIS = os.environ.get("BENCH_SHARED_REDIS", "redis://127.0.0.1:6379/15")
# the queue the gateway publishes vote_cast events to (for its depth only)
VOTES_QUEUE = contracts.VOTES_QUEUE
DEAD_LETTER_QUEUE = contracts.DEAD_LETTER_QUEUE
CLK_TCK = os.sysconf("SC_CLK_TCK")


class SetupError(Exception):
    pass


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def cpu_seconds(pid):
    """User + system CPU time of a process, or None once it is gone."""
    try:
        with open("/proc/{}/stat".format(pid)) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def busy_seconds():
    """CPU seconds spent busy by the whole machine (all cores) so far."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def memory_kb(pid, field="VmHWM"):
    try:
        with open("/proc/{}/status".format(pid)) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rabbitmq_pid():
    """The RabbitMQ server's beam process (not a rabbitmqctl one)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/cmdline".format(entry), "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"beam.smp") and b"rabbit" in cmdline \
                and b"boot" in cmdline:
            return int(entry)
    return None


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            mem_gb = int(handle.readline().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        mem_gb = 0
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": "{:.1f} GiB".format(mem_gb),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
    }


class Service:
    """One ``nameko run`` process of ours."""

    def __init__(self, name, module, env, log_path):
        self.name = name
        self.module = module
        self.env = env
        self.log_path = log_path
        self.process = None
        self.peak_kb = 0
        self.port = None

    def start(self, config):
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [os.path.join(BIN, "nameko"), "run", "--config", config,
                 self.module],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # our own process group: a Ctrl-C reaches the bench only,
                # which then stops these in order
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def sample_memory(self):
        if self.alive():
            self.peak_kb = max(self.peak_kb, memory_kb(self.pid) or 0)

    def stop(self, timeout=10):
        if self.process is None:
            return
        self.sample_memory()
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    process.wait(0.3)
                except subprocess.TimeoutExpired:
                    # nameko run handles SIGTERM in a green thread, which
                    # runs only when the hub wakes up: a service with no
                    # timer (the bare one) sleeps until a connection comes
                    self._poke()
            if process.poll() is None:
                process.kill()
                process.wait(10)

    def _poke(self):
        if self.port:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            except OSError:
                pass

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""


class Environment:

    def __init__(self, config_path):
        self.config_path = config_path
        self.tmp = tempfile.mkdtemp(prefix="vote-bench-")
        self.vhost = None
        self.vhost_made = False
        self.amqp_uri = None
        self.redis_uri = None
        self.redis_process = None
        self.redis_shared = False
        self.services = {}
        self.ports = {}
        self._closed = False
        self.failed = False

    # -- RabbitMQ

    def rabbitmqctl(self, *args):
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=120)
        if done.returncode:
            raise SetupError("rabbitmqctl {} failed: {}".format(
                " ".join(args), done.stderr.decode(errors="replace").strip()))

    def make_vhost(self):
        name = "bench-{}".format(uuid.uuid4().hex[:10])
        self.vhost = name
        try:
            self.rabbitmqctl("add_vhost", name)
        except subprocess.TimeoutExpired:
            self.vhost_made = True  # may exist: remove it at the end
            raise
        self.vhost_made = True
        self.rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        self.amqp_uri = "amqp://guest:guest@{}/{}".format(AMQP_HOST, name)

    def delete_vhost(self, problems, patience=60):
        """Deletes our vhost, waiting up to ``patience`` s for a broker that
        is down (someone may be restarting it)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self.rabbitmqctl("delete_vhost", self.vhost)
                return
            except Exception as exc:
                if "rabbit' app to be running" not in str(exc) \
                        or time.monotonic() > deadline:
                    problems.append("deleting vhost {}: {}\n  remove it with: "
                                    "rabbitmqctl delete_vhost {}".format(
                                        self.vhost, str(exc).splitlines()[0],
                                        self.vhost))
                    return
                print("clean-up: RabbitMQ is down; waiting to delete vhost {}".format(
                    self.vhost), file=sys.stderr, flush=True)
                time.sleep(3)

    def amqp_connection(self):
        connection = amqp.Connection(
            AMQP_HOST, userid="guest", password="guest",
            virtual_host=self.vhost, connect_timeout=5)
        connection.connect()
        return connection

    def queue_depth(self, name=VOTES_QUEUE):
        """(ready messages, consumers), or (None, None) if no such queue."""
        connection = self.amqp_connection()
        try:
            channel = connection.channel()
            try:
                _, messages, consumers = channel.queue_declare(name, passive=True)
                return messages, consumers
            except amqp.exceptions.NotFound:
                return None, None
        finally:
            try:
                connection.close()
            except Exception:
                pass

    def rabbitmq_version(self):
        connection = self.amqp_connection()
        try:
            version = connection.server_properties.get("version", "?")
            return version.decode() if isinstance(version, bytes) else version
        finally:
            connection.close()

    # -- Redis

    def start_redis(self):
        """A private redis-server (AOF every second, as docker-compose.yml
        runs it), so that nothing else shares its memory or CPU; without
        the binary, database 15 of the local server, flushed."""
        binary = shutil.which("redis-server")
        if binary is None:
            self.redis_shared = True
            self.redis_uri = SHARED_REDIS
            self.redis().flushdb()
            return
        port = free_port()
        data = os.path.join(self.tmp, "redis")
        os.mkdir(data)
        log = open(os.path.join(self.tmp, "redis.log"), "ab")
        try:
            self.redis_process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1",
                 "--dir", data, "--save", "", "--appendonly", "yes",
                 "--appendfsync", "everysec", "--daemonize", "no",
                 # LATENCY LATEST then names any stall of 10 ms or more
                 "--latency-monitor-threshold", "10",
                 "--slowlog-log-slower-than", "10000"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        self.redis_uri = "redis://127.0.0.1:{}/0".format(port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.redis().ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.redis_process.poll() is not None:
                raise SetupError("the private redis-server did not start")
            time.sleep(0.05)

    def redis(self):
        return redis.Redis.from_url(self.redis_uri, decode_responses=True)

    @property
    def redis_pid(self):
        return self.redis_process.pid if self.redis_process else None

    # -- services

    def service_env(self, port=None):
        env = dict(os.environ)
        env.update({
            "AMQP_URI": self.amqp_uri,
            "REDIS_URI": self.redis_uri,
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "PYTHONWARNINGS": "ignore::DeprecationWarning,"
                              "ignore:pkg_resources is deprecated:UserWarning",
        })
        env.pop("WEB_SERVER_ADDRESS", None)
        if port:
            env["WEB_SERVER_ADDRESS"] = "127.0.0.1:{}".format(port)
        return env

    def start_service(self, name, module, http=False):
        port = free_port() if http else None
        if http:
            self.ports[name] = port
        service = self.services.get(name)
        if service is None:
            service = Service(name, module, self.service_env(port),
                              os.path.join(self.tmp, name + ".log"))
            self.services[name] = service
        service.port = port
        service.start(self.config_path)
        return service

    def url(self, name, path=""):
        return "http://127.0.0.1:{}{}".format(self.ports[name], path)

    def wait_http(self, name, path, statuses, timeout=30):
        """Until ``path`` answers with one of ``statuses``."""
        service = self.services[name]
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not service.alive():
                raise SetupError("{} exited at start:\n{}".format(
                    name, service.log_tail()))
            try:
                with urllib.request.urlopen(self.url(name, path), timeout=2) as reply:
                    last = reply.status
            except urllib.error.HTTPError as exc:
                last = exc.code
            except OSError as exc:
                last = exc
            if last in statuses:
                return
            time.sleep(0.1)
        raise SetupError("{} did not answer {} with {} in {} s (last: {})\n{}".format(
            name, path, statuses, timeout, last, service.log_tail()))

    def sample_memory(self):
        for service in self.services.values():
            service.sample_memory()

    # -- teardown

    def close(self):
        if self._closed:
            return
        self._closed = True
        # no second Ctrl-C half way through the clean-up
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        problems = []
        try:
            for service in reversed(list(self.services.values())):
                try:
                    service.stop()
                except Exception as exc:
                    problems.append("stopping {}: {}".format(service.name, exc))
            if self.redis_process is not None:
                try:
                    self.redis_process.terminate()
                    self.redis_process.wait(10)
                except subprocess.TimeoutExpired:
                    self.redis_process.kill()
                    self.redis_process.wait(10)
                except Exception as exc:
                    problems.append("stopping redis-server: {}".format(exc))
            elif self.redis_shared and self.redis_uri:
                try:
                    self.redis().flushdb()
                except Exception as exc:
                    problems.append("flushing {}: {}".format(self.redis_uri, exc))
            if self.vhost_made:
                self.delete_vhost(problems)
            shutil.rmtree(os.path.join(self.tmp, "redis"), ignore_errors=True)
            if self.failed:
                print("service logs kept in {}".format(self.tmp), file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        for problem in problems:
            print("clean-up: " + problem, file=sys.stderr)
