"""The store's Lua scripts, read once from scripts/*.lua when this module
is imported, and the commands that call them.

A script that ranks is rankings.lua followed by its own file; the rankings'
constants (services/rankings.py) go to it as its last six arguments, so
that no value is written into the Lua text. Each script is called by its
SHA-1 (EVALSHA) where the write router loads it on NOSCRIPT, and by its
text (EVAL) inside the read pipelines (a cluster pipeline has no eval())."""
import collections
import hashlib
from pathlib import Path

from services import rankings

FOLDER = Path(__file__).resolve().parent / "scripts"

# appended to the arguments of every script that ranks (rankings.lua reads
# them from the end): exact text, as Lua would read the literals
RANKING_ARGS = (
    repr(rankings.WILSON_Z), str(rankings.HOT_EPOCH), str(rankings.HOT_SECONDS),
    repr(rankings.SCALES[rankings.BEST]), repr(rankings.SCALES[rankings.CONTROVERSIAL]),
    repr(rankings.SCALES[rankings.HOT]),
)


def sha(text):
    return hashlib.sha1(text.encode()).hexdigest()


def _read(name):
    return (FOLDER / name).read_text(encoding="utf-8")


class Script(collections.namedtuple("Script", "name files text sha args keys ranks")):
    """One script: ``files`` read in order into ``text``; ``args`` the names
    of its own arguments (None: any number), ``keys`` how many keys it
    names (None: any number), ``ranks`` whether rankings.lua is in it."""

    __slots__ = ()

    def evalsha(self, keys, *args):
        """The EVALSHA command's arguments."""
        return ("EVALSHA", self.sha, len(keys), *keys, *self._arguments(keys, args))

    def eval(self, keys, *args):
        """The EVAL command's arguments (the text: no NOSCRIPT to handle)."""
        return ("EVAL", self.text, len(keys), *keys, *self._arguments(keys, args))

    def _arguments(self, keys, args):
        # a caller out of step with its script fails here, not in Redis
        if (self.args is not None and len(args) != len(self.args)) or (
                self.keys is not None and len(keys) != self.keys):
            raise TypeError("{} takes {} keys and arguments {}, not {} and {}".format(
                self.name, self.keys, self.args, len(keys), len(args)))
        return args + RANKING_ARGS if self.ranks else args


def load(name, args, keys=None, ranks=False):
    files = (("rankings.lua",) if ranks else ()) + (name + ".lua",)
    text = "".join(_read(file) for file in files)
    return Script(name, files, text, sha(text), args, keys, ranks)


APPLY = load("apply", ("mark_ttl", "parts", "idempotency_ttl", "clock_skew_us",
                       "retraction_ttl"), ranks=True)
SET_CREATED = load("set_created", ("post_id", "created_at", "clock_skew_us"),
                   keys=3, ranks=True)
REBUILD = load("rebuild", ("post_id", "now"), keys=6, ranks=True)
COUNTS = load("counts", None)     # a voter id or "" for each post
AFTER = load("after", ("score", "post_id", "count"), keys=1)
ALL = (APPLY, SET_CREATED, REBUILD, COUNTS, AFTER)
