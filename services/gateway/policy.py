"""What the gateway takes from a voting client (README, "Securing it").

CREATED_AT_WINDOW: a vote's createdAt comes from the client, which nothing
proves; taken as it is, a first vote with createdAt=0 pinned its post to
1970 in ``hot``, for good (the creation time is set once). So it is
clamped to [accept time - window, accept time]. In hot, 45,000 s of age
weigh as much as a tenfold score (services/rankings.py), so the default
300 s moves a post by 300 / 45,000 = 0.0067: as much as 1.5% more or less
score, where one more vote on a post of score 1 is 0.301. A post's real
creation time, if older, is the operator's to set (PUT /posts/<postId>).

VOTE_BY_GET: whether GET /vote casts a vote. A GET can be triggered by any
page a voter visits (an image, a link), with no CORS check; on by default,
for the curl examples, and a deployment turns it off.
"""

from services.settings import FromSettings, Settings

DEFAULT_CREATED_AT_WINDOW = 300


class VotePolicy:
    def __init__(self, created_at_window=DEFAULT_CREATED_AT_WINDOW, vote_by_get=True):
        self.created_at_window = created_at_window
        self.vote_by_get = vote_by_get

    def created_at(self, given, accepted_us):
        """The creation time a vote accepted at ``accepted_us`` (us since
        the epoch) may set: ``given`` (seconds) clamped to the window."""
        accepted = accepted_us // 1_000_000
        return min(max(given, accepted - self.created_at_window), accepted)


def from_settings(settings):
    return VotePolicy(settings.created_at_window, settings.vote_by_get)


def from_config(config):
    return from_settings(Settings(config))


def VotePolicyProvider():
    """Injects the configured VotePolicy."""
    return FromSettings(from_settings)
