"""Processes with their output in a log file, and the config they run on."""
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import requests
import yaml

with warnings.catch_warnings():  # it imports pkg_resources, deprecated
    warnings.simplefilter("ignore")
    from nameko.cli.main import setup_yaml_parser

ROOT = Path(__file__).resolve().parents[1]
NAMEKO = str(Path(sys.executable).parent / "nameko")
GATEWAY = "services.gateway.service"
VOTES = "services.votes.service"
# as the Makefile has it: eventlet and setuptools warn about their futures
QUIET_WARNINGS = ("ignore::DeprecationWarning,"
                  "ignore:pkg_resources is deprecated:UserWarning")
START_TIMEOUT = 30      # a process up and answering


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout, what, interval=0.2):
    """Poll ``predicate`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after {}s waiting for {}".format(
                timeout, what))
        time.sleep(interval)


def write_config(path, amqp_uri, redis_uri, web_port, base=ROOT / "config.yml",
                 log_level=None, settings=None):
    """``base`` (config.yml) with its ${VARIABLES} resolved, on the given
    vhost, Redis and port, and a metrics port of its own, so that processes
    do not collide; ``settings`` override more keys."""
    setup_yaml_parser()
    with open(base) as handle:
        config = yaml.safe_load(handle)
    config.update({
        "AMQP_URI": amqp_uri,
        "WEB_SERVER_ADDRESS": "127.0.0.1:{}".format(web_port),
        "METRICS_ADDRESS": "127.0.0.1:{}".format(free_port()),
        "REDIS_URIS": {"votes": redis_uri},
    })
    config.update(settings or {})
    if log_level:
        config["LOGGING"]["root"]["level"] = log_level
    path.write_text(yaml.safe_dump(config))
    return path


class Process:
    """One server process, its output in a log file. It runs in a session
    of its own, so that a Ctrl-C reaches only its owner, which stops it;
    ``nofile`` lowers its open-file limit (``ulimit -n``)."""

    def __init__(self, label, argv, log_path, nofile=None, port=None, cwd=ROOT):
        self.label = label
        self.cwd = cwd  # another checkout runs its own code (bench baselines)
        self.argv = argv
        self.log_path = Path(log_path)
        self.nofile = nofile
        self.port = port  # its HTTP port, if any
        self.proc = None

    @classmethod
    def nameko(cls, label, module, config_path, log_path, **options):
        return cls(label, [NAMEKO, "run", "--config", str(config_path), module],
                   log_path, **options)

    def _limit(self):
        if self.nofile is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self):
        with open(self.log_path, "ab") as log:
            log.write("--- start {}\n".format(" ".join(self.argv)).encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, PYTHONWARNINGS=QUIET_WARNINGS),
                preexec_fn=self._limit if self.nofile is not None else None)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait_exit(self, timeout):
        """The exit code, or None if still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL if still running after ``timeout`` s."""
        if not self.alive:
            return
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.wait_exit(0.3) is None and time.monotonic() < deadline:
            # nameko run handles SIGTERM in a green thread, which runs only
            # when the hub wakes up: a service with no timer (the bench's
            # bare one) sleeps until a connection comes
            if self.port:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                except OSError:
                    pass
        self.kill()

    def wait_http(self, path, timeout, statuses=None):
        """Until ``path`` on its port answers (with one of ``statuses``)."""
        url = "http://127.0.0.1:{}{}".format(self.port, path)

        def answers():
            assert self.alive, "{} exited:\n{}".format(self.label, self.tail())
            try:
                status = requests.get(url, timeout=2).status_code
            except requests.RequestException:
                return False
            return statuses is None or status in statuses
        wait_until(answers, timeout, "{} to answer {}".format(self.label, path),
                   interval=0.1)

    def memory_kb(self, field="VmHWM"):
        """A memory figure of /proc/<pid>/status in KiB (peak RSS by
        default), or None once the process is gone."""
        try:
            with open("/proc/{}/status".format(self.pid)) as handle:
                for line in handle:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except (OSError, TypeError):
            pass
        return None

    def tail(self, lines=60):
        """The last lines of the log, without the access lines of 202s."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        kept = [line for line in text.splitlines()
                if not ("nameko.web.server" in line and '" 202 ' in line)]
        return "\n".join(kept[-lines:])
