"""Logging helpers named in config.yml."""
import logging


class DropExpectedErrors(logging.Filter):
    """Nameko logs every expected exception (a 400, a 404, a retried Redis
    outage) as a warning with a traceback. The access log and our own lines
    already tell those; drop the duplicates with their tracebacks."""

    def filter(self, record):
        return not (record.name == "nameko.containers"
                    and record.msg.startswith("(expected) error"))
