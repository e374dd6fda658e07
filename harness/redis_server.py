"""A private redis-server on a free port, its data and log in a folder."""
import redis

from harness.process import START_TIMEOUT, Process, free_port, wait_until


class RedisServer:
    """``options``: more redis-server arguments. Stopping it saves its data
    (SHUTDOWN SAVE) and starting it again loads it back. ``tls``
    (harness.tls.TestCA): TLS only, on ``port`` (no plain port), the URI
    ``rediss://`` with the CA in its ``ssl_ca_certs``; ``password``: the
    default user's (requirepass), or with ``username`` an ACL user's (the
    default user then off)."""

    def __init__(self, folder, *options, tls=None, password=None, username=None):
        self.port = free_port()
        self.dir = folder / "redis"
        self.dir.mkdir(exist_ok=True)
        self.uri = "redis://127.0.0.1:{}/0".format(self.port)
        ports = ["--port", str(self.port)]
        if tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(tls.server_cert),
                     "--tls-key-file", str(tls.server_key),
                     "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
            self.uri = "rediss://127.0.0.1:{}/0?ssl_ca_certs={}".format(
                self.port, tls.ca)
        if username is not None:
            ports += ["--user", username, "on", ">" + password, "~*", "&*", "+@all",
                      "--user", "default", "off"]
        elif password is not None:
            ports += ["--requirepass", password]
        if password is not None:
            self.uri = self.uri.replace("://", "://{}:{}@".format(
                username or "", password), 1)
        self.process = Process("redis", [
            "redis-server", "--bind", "127.0.0.1", *ports,
            "--save", "", "--dir", str(self.dir), "--dbfilename", "dump.rdb",
            "--daemonize", "no", *options,
        ], folder / "redis.log")

    @property
    def pid(self):
        return self.process.pid

    def client(self, **options):
        return redis.Redis.from_url(
            self.uri, decode_responses=True, socket_timeout=5, **options)

    def answers(self):
        try:
            with self.client() as client:
                return client.ping()
        except redis.RedisError:
            return False

    def start(self):
        self.process.start()

        def up():
            assert self.process.alive, "redis-server exited:\n" + self.process.tail()
            return self.answers()
        wait_until(up, START_TIMEOUT, "redis-server to answer", interval=0.05)

    def stop(self):
        with self.client() as client:
            try:
                client.shutdown(save=True)
            except redis.ConnectionError:  # the server closes on us
                pass
        assert self.process.wait_exit(10) is not None, "redis-server did not stop"

    def kill(self):
        self.process.kill()
