"""A RabbitMQ node of our own, next to the machine's.

The machine's broker on 5672 is shared: a test that stops it stops every
other user of it. A private node has its own node name, AMQP and Erlang
distribution ports, data and log folders, and runs as the ``rabbitmq`` user,
so it shares that user's Erlang cookie with ``rabbitmqctl`` and with the
other private nodes (harness.rabbit_cluster joins them). The machine's
``/etc/rabbitmq/rabbitmq.conf`` pins the listener to 5672, so the node gets
a config file of its own. It is started with an empty environment but for
its own settings, and stopped by pid: the node on 5672 is never named.

No pytest here: the bench uses it too.
"""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness.process import free_port, wait_until
from harness.rabbit import RabbitmqctlError, amqp_uri, rabbitmqctl

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
USER = "rabbitmq"
BOOT_TIMEOUT = 120   # the VM up and its app running
STOP_TIMEOUT = 15    # the VM gone after SIGTERM, before SIGKILL
TLS_FILES = ("ca.pem", "server.pem", "server.key")  # copied into the node's folder


class RabbitNode:
    """``name`` (``@localhost`` added if bare) on ``amqp_port`` and
    ``dist_port`` (free ones if not given), its files in a folder of its own
    under ``base`` (a new temporary folder if not given, removed by
    ``stop()``)."""

    def __init__(self, name, amqp_port=None, dist_port=None, base=None, tls=None):
        self.name = name if "@" in name else name + "@localhost"
        self.amqp_port = amqp_port or free_port()
        # tls (harness.tls.TestCA): a TLS listener on tls_port that asks
        # for a client certificate of that CA, and no plain one
        self.tls = tls
        self.tls_port = free_port() if tls is not None else None
        self.dist_port = dist_port or free_port()
        self.own_base = base is None
        self.base = Path(base or tempfile.mkdtemp(prefix="rabbit-node-"))
        self.dir = self.base / self.name.split("@")[0]
        self.pid_file = self.dir / "pid"
        self.pid = None
        self.app_running = False

    @property
    def host(self):
        return "127.0.0.1:{}".format(self.amqp_port)

    def uri(self, vhost=""):
        if self.tls is not None:
            return amqp_uri("127.0.0.1:{}".format(self.tls_port), vhost).replace(
                "amqp://", "amqps://", 1)
        return amqp_uri(self.host, vhost)

    def _listeners(self):
        if self.tls is None:
            return "listeners.tcp.1 = 127.0.0.1:{}\n".format(self.amqp_port)
        return ("listeners.tcp = none\n"
                "listeners.ssl.1 = 127.0.0.1:{}\n"
                "ssl_options.cacertfile = {}\n"
                "ssl_options.certfile = {}\n"
                "ssl_options.keyfile = {}\n"
                "ssl_options.verify = verify_peer\n"
                "ssl_options.fail_if_no_peer_cert = true\n").format(
                    self.tls_port, *(self.dir / name for name in TLS_FILES))

    def ctl(self, *args, **kwargs):
        return rabbitmqctl(*args, node=self.name, **kwargs)

    def queues(self, *args, timeout=60):
        """``rabbitmq-queues`` through this node (``grow``,
        ``quorum_status``, ...); RabbitmqctlError if it fails."""
        done = subprocess.run(["rabbitmq-queues", "-q", "-n", self.name, *args],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RabbitmqctlError("rabbitmq-queues {} failed: {}".format(
                " ".join(args[:2]), (done.stderr or done.stdout).strip()))
        return done

    # --- life cycle -------------------------------------------------------

    def start(self):
        """Boot the node and wait until its app runs (about 5 s alone)."""
        self.launch()
        self.await_boot()
        return self

    def launch(self):
        """Start the VM, without waiting (again, after ``kill()``: it comes
        back with its data, and into its cluster)."""
        if shutil.which("runuser") is None or not os.path.exists(SERVER):
            raise RuntimeError("a private RabbitMQ node needs runuser and "
                               "rabbitmq-server (Debian's rabbitmq-server package)")
        user = pwd.getpwnam(USER)
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            (self.dir / "rabbitmq.conf").write_text(
                self._listeners() +
                "loopback_users = none\n"
                # the machine is shared: no alarm for a disk with 2 GB free
                "disk_free_limit.absolute = 50MB\n")
            (self.dir / "enabled_plugins").write_text("[].\n")
            if self.tls is not None:  # where the rabbitmq user can read them
                for name, source in zip(TLS_FILES, (
                        self.tls.ca, self.tls.server_cert, self.tls.server_key), strict=True):
                    shutil.copyfile(source, self.dir / name)
            for path in [self.base, self.dir, *self.dir.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": user.pw_dir,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
        }
        if self.tls is None:  # else rabbitmq.conf's TLS listener alone
            env.update(RABBITMQ_NODE_PORT=str(self.amqp_port),
                       RABBITMQ_NODE_IP_ADDRESS="127.0.0.1")
        subprocess.run(["runuser", "-u", USER, "--", "env", "-i",
                        *("{}={}".format(k, v) for k, v in env.items()),
                        SERVER, "-detached"],
                       check=True, capture_output=True, timeout=60)

    def await_boot(self, timeout=BOOT_TIMEOUT):
        """Until the app runs (the pid file appears first); records the pid."""
        try:
            self.ctl("wait", "--timeout", str(timeout), str(self.pid_file),
                     timeout=timeout + 30)
        finally:  # a node that failed to boot is still stopped by pid
            self.pid = self._pid_from_file()
        self.app_running = True

    def _pid_from_file(self):
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def alive(self):
        pid = self.pid or self._pid_from_file()
        if pid is None:
            return False
        # not a zombie, nor a reused pid: the VM of this node has its name
        try:
            with open("/proc/{}/stat".format(pid)) as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
            with open("/proc/{}/environ".format(pid), "rb") as handle:
                return "RABBITMQ_NODENAME={}".format(self.name).encode() in (
                    handle.read().split(b"\0"))
        except OSError:
            return False

    def stop(self):
        """Stop the VM by pid (SIGTERM, then SIGKILL if it will not), and
        remove its files."""
        self.pid = self.pid or self._pid_from_file()
        if self.alive:
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.alive and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.alive:
                os.kill(self.pid, signal.SIGKILL)
        self.app_running = False
        shutil.rmtree(self.base if self.own_base else self.dir, ignore_errors=True)

    # --- faults -----------------------------------------------------------

    def join(self, via):
        """Into the cluster of the running node ``via`` (this one booted)."""
        self.stop_app()
        self.ctl("join_cluster", via.name)
        self.start_app()

    def kill(self):
        """kill -9 the VM; its files stay, for ``launch()``."""
        os.kill(self.pid, signal.SIGKILL)
        self.app_running = False
        wait_until(lambda: not self.alive, 10, self.name + " gone")

    def stop_app(self):
        self.app_running = False
        self.ctl("stop_app")

    def start_app(self):
        self.ctl("start_app")
        self.app_running = True
