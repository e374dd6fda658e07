"""Who may read /metrics and /ready (README, "Securing it").

With OPERATOR_ADDRESS set, they are served on that address alone (with
/health), and the public port answers them 404 as unknown routes. With
OPERATOR_TOKEN set, they need ``Authorization: Bearer <OPERATOR_TOKEN>``
wherever they are served. With neither, they are public, as before.
"""
import hmac

from nameko.extensions import DependencyProvider

from services.gateway.exceptions import OperatorRouteMoved, OperatorTokenRequired
from services.gateway.tokens import bearer_token

ADDRESS_CONFIG_KEY = "OPERATOR_ADDRESS"
TOKEN_CONFIG_KEY = "OPERATOR_TOKEN"


class OperatorAccess:
    def __init__(self, moved, token):
        self.moved = moved
        self.token = token.encode() if token else None

    def check_public(self, environ):
        """On the public port: 404 once moved, else as ``check``."""
        if self.moved:
            raise OperatorRouteMoved("no such resource")
        self.check(environ)

    def check(self, environ):
        if self.token is None:
            return
        given = bearer_token(environ)
        if given is None or not hmac.compare_digest(given.encode(), self.token):
            raise OperatorTokenRequired("this needs the operator's bearer token")


class OperatorGate(DependencyProvider):
    """Injects the configured OperatorAccess."""

    def setup(self):
        config = self.container.config
        self.access = OperatorAccess(
            bool(config.get(ADDRESS_CONFIG_KEY)),
            str(config.get(TOKEN_CONFIG_KEY) or "") or None)

    def get_dependency(self, worker_ctx):
        return self.access
