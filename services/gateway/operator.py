"""The gateway's operator gate: services.platform.operator, shared with the
votes service's status server."""
from services.platform.operator import (  # noqa: F401
    ADDRESS_CONFIG_KEY,
    TOKEN_CONFIG_KEY,
    OperatorAccess,
    OperatorGate,
    OperatorRouteMoved,
    OperatorTokenNotSet,
    OperatorTokenRequired,
)
