"""A RabbitMQ node of our own, next to the machine's.

The machine's broker on 5672 is shared: a test that stops it stops every
other user of it. A private node has its own node name, AMQP and Erlang
distribution ports, data and log folders, and runs as the ``rabbitmq`` user
(whose Erlang cookie ``rabbitmqctl`` uses too). The machine's
``/etc/rabbitmq/rabbitmq.conf`` pins the listener to 5672, so the node gets
a config file of its own. Stopped by ``rabbitmqctl stop``, or by pid.
"""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness.process import free_port
from harness.rabbit import amqp_uri, rabbitmqctl

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
USER = "rabbitmq"
BOOT_TIMEOUT = 90


class RabbitNode:

    def __init__(self, name, amqp_port=None, dist_port=None, base=None):
        self.name = name if "@" in name else name + "@localhost"
        self.amqp_port = amqp_port or free_port()
        self.dist_port = dist_port or free_port()
        self.base = Path(base or tempfile.mkdtemp(prefix="rabbit-node-"))
        self.dir = self.base / self.name.split("@")[0]
        self.pid_file = self.dir / "pid"

    @property
    def host(self):
        return "127.0.0.1:{}".format(self.amqp_port)

    def uri(self, vhost=""):
        return amqp_uri(self.host, vhost)

    def ctl(self, *args, **kwargs):
        return rabbitmqctl(*args, node=self.name, **kwargs)

    def _env(self):
        return dict(
            os.environ, HOME=pwd.getpwnam(USER).pw_dir,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"))

    def start(self):
        """Boot the node and wait until it answers (about 5 s)."""
        if shutil.which("runuser") is None or not os.path.exists(SERVER):
            raise RuntimeError("a private RabbitMQ node needs runuser and "
                               "rabbitmq-server (Debian's rabbitmq-server package)")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "rabbitmq.conf").write_text(
            "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n".format(
                self.amqp_port))
        (self.dir / "enabled_plugins").write_text("[].\n")
        user = pwd.getpwnam(USER)
        for path in [self.base, self.dir, *self.dir.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
        subprocess.run(["runuser", "-u", USER, "--", SERVER, "-detached"],
                       env=self._env(), check=True, capture_output=True,
                       timeout=60)
        # the pid file appears as the VM starts; then the app boots
        self.ctl("wait", str(self.pid_file), "--timeout", str(BOOT_TIMEOUT),
                 timeout=BOOT_TIMEOUT + 10)
        return self

    def stop_app(self):
        self.ctl("stop_app")

    def start_app(self):
        self.ctl("start_app")

    @property
    def pid(self):
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        """Stop the node (killed if it will not), and remove its folder."""
        pid = self.pid
        if self.ctl("stop", check=False, timeout=60).returncode and pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)
