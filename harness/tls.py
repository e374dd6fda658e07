"""A certificate authority made at test time with ``openssl``: its CA
certificate, a server certificate for 127.0.0.1 and localhost (in its
subjectAltName, as clients check the name), and a client certificate.

No pytest here: the bench may use it too.
"""
import os
import subprocess
from pathlib import Path

DAYS = "2"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


class TestCA:
    """Files under ``folder``: ``ca`` (ca.pem), ``server_cert``/``server_key``
    and ``client_cert``/``client_key``; all readable by every user, as a
    private RabbitMQ node runs as another user."""

    __test__ = False  # not a pytest class

    def __init__(self, folder):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.server_cert = self.dir / "server.pem"
        self.server_key = self.dir / "server.key"
        self.client_cert = self.dir / "client.pem"
        self.client_key = self.dir / "client.key"

    def make(self):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS,
                 "-subj", "/CN=votes test CA", "-keyout", self.ca_key.name,
                 "-out", self.ca.name,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        self._issue("server", "/CN=localhost",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        self._issue("client", "/CN=votes-client",
                    "extendedKeyUsage=clientAuth\n")
        for path in self.dir.iterdir():
            os.chmod(path, 0o644)
        os.chmod(self.dir, 0o755)
        return self

    def _issue(self, name, subject, extensions):
        (self.dir / (name + ".ext")).write_text(extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                 "-keyout", name + ".key", "-out", name + ".csr", cwd=self.dir)
        _openssl("x509", "-req", "-in", name + ".csr", "-CA", self.ca.name,
                 "-CAkey", self.ca_key.name, "-CAcreateserial", "-days", DAYS,
                 "-extfile", name + ".ext", "-out", name + ".pem", cwd=self.dir)

    def amqp_ssl(self):
        """nameko's AMQP_SSL: the CA to check the broker, and the client
        certificate the broker asks for."""
        return {"ca_certs": str(self.ca), "certfile": str(self.client_cert),
                "keyfile": str(self.client_key)}
