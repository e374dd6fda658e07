"""The access log of the HTTP server: what clients send reaches it with
its control characters escaped (no forged lines, no terminal escapes)."""
import logging
import sys

ACCESS_LOG = logging.getLogger("nameko.web.server")  # nameko's access log

_CONTROL = {code: "\\x{:02x}".format(code)
            for code in list(range(0x20)) + list(range(0x7f, 0xa0))}
_CONTROL_KEEP_NEWLINE = dict(_CONTROL)
del _CONTROL_KEEP_NEWLINE[ord("\n")]


def escape_controls(text, keep_newlines=False):
    """``text`` with C0/C1 control characters (ESC, BEL, CR, ...) written
    as ``\\xNN``, so that a client cannot drive the terminal of whoever
    reads the log, or forge log lines."""
    return str(text).translate(_CONTROL_KEEP_NEWLINE if keep_newlines else _CONTROL)



class EscapingLog:
    """The logger eventlet's server writes to (access lines, debug lines):
    each message with its control characters escaped."""

    def __init__(self, logger):
        self.logger = logger

    def _emit(self, level, msg, *args):
        if self.logger.isEnabledFor(level):
            text = msg % args if args else msg
            self.logger.log(level, "%s", escape_controls(text, keep_newlines=True))

    def debug(self, msg, *args, **kwargs):
        self._emit(logging.DEBUG, msg, *args)

    def info(self, msg, *args, **kwargs):
        # eventlet logs the traceback of an answer it could not write at
        # info; a client that went away before reading it is no error
        gone = sys.exc_info()[1]
        if isinstance(gone, ConnectionError) and str(msg).startswith("Traceback"):
            self._emit(logging.DEBUG, "client gone before its answer was written: %r", gone)
            return
        self._emit(logging.INFO, msg, *args)

    def error(self, msg, *args, **kwargs):
        self._emit(logging.ERROR, msg, *args)

    def write(self, msg, *args):
        self._emit(logging.INFO, msg, *args)

