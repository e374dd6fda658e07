class InvalidVote(ValueError):
    """A vote or event that breaks the payload rules; never retried."""


class NotFound(LookupError):
    """No vote has ever been recorded for the post."""


class StoreUnavailable(Exception):
    """Redis did not answer; the operation may succeed if retried."""
