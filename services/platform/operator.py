"""Who may use the operator routes (README, "Securing it"): /metrics and
/ready of every server a process runs, and the operator's writes (the
gateway's PUT /posts/<postId>).

Reads: with OPERATOR_ADDRESS set, the gateway serves them on that address
alone (with /health), and its public port answers them 404 as unknown
routes. With OPERATOR_TOKEN set, they need ``Authorization: Bearer
<OPERATOR_TOKEN>`` wherever they are served (the votes service's
METRICS_ADDRESS too). With neither, they are public, as before.

Writes always need the token: with no OPERATOR_TOKEN configured they are
refused (403) on every address, since no request could ever prove it is the
operator's; with OPERATOR_ADDRESS set they move there, as the reads do.
"""
import hmac

from services.settings import FromSettings

ADDRESS_CONFIG_KEY = "OPERATOR_ADDRESS"
TOKEN_CONFIG_KEY = "OPERATOR_TOKEN"


class OperatorTokenRequired(Exception):
    """An operator route without the operator's bearer token."""

    headers = {"WWW-Authenticate": "Bearer"}


class OperatorTokenNotSet(Exception):
    """An operator write while no OPERATOR_TOKEN is configured."""


class OperatorRouteMoved(LookupError):
    """An operator route asked on the public port once there is an operator
    address: answered as an unknown route."""


# (exception, status, CODE), as the services' error tables
ERRORS = (
    (OperatorTokenRequired, 401, "OPERATOR_TOKEN_REQUIRED"),
    (OperatorTokenNotSet, 403, "OPERATOR_TOKEN_NOT_SET"),
    (OperatorRouteMoved, 404, "NOT_FOUND"),
)


def bearer_token(environ):
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class OperatorAccess:
    def __init__(self, moved, token):
        self.moved = moved
        self.token = token.encode() if token else None

    def check_public(self, environ):
        """A read on the public port: 404 once moved, else as ``check``."""
        if self.moved:
            raise OperatorRouteMoved("no such resource")
        self.check(environ)

    def check(self, environ):
        """A read: the bearer token, if one is configured."""
        if self.token is not None:
            self._match(environ)

    def check_write_public(self, environ):
        """A write on the public port: 404 once moved, else as
        ``check_write``."""
        if self.moved:
            raise OperatorRouteMoved("no such resource")
        self.check_write(environ)

    def check_write(self, environ):
        """A write: the bearer token, which must be configured."""
        if self.token is None:
            raise OperatorTokenNotSet(
                "this is an operator action: it is refused until OPERATOR_TOKEN is set")
        self._match(environ)

    def _match(self, environ):
        given = bearer_token(environ)
        if given is None or not hmac.compare_digest(given.encode(), self.token):
            raise OperatorTokenRequired("this needs the operator's bearer token")


def from_settings(settings):
    # the votes service has no operator address: its reads stay where they are
    address = settings.operator_address if "OPERATOR_ADDRESS" in settings else None
    return OperatorAccess(bool(address), settings.operator_token)


def OperatorGate():
    """Injects the configured OperatorAccess."""
    return FromSettings(from_settings)
