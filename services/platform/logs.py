"""The log filter named in config.yml."""
import logging


class ExpectedErrorsOnOneLine(logging.Filter):
    """nameko's container logs every expected exception (a 400, a 404, a
    retried Redis outage) as a warning with its traceback. That line is the
    one record of the error (the HTTP entrypoint logs nothing more), so it
    is kept, without the traceback, which says nothing about a client's
    mistake or a known outage."""

    def filter(self, record):
        if record.name == "nameko.containers" and str(record.msg).startswith(
                "(expected) error"):
            record.exc_info = None
            record.exc_text = None
        return True
