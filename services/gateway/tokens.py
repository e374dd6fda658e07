"""Signed voter tokens (README, "Securing it").

Off unless VOTER_TOKEN_SECRET (HS256) or VOTER_TOKEN_PUBLIC_KEY (RS256 or
ES256, VOTER_TOKEN_ALGORITHM) is set. When on, a request that names a
voter (``voterId``) must carry ``Authorization: Bearer <jwt>`` signed by
the site's backend, with ``sub`` equal to that voterId, an ``exp``, an
``aud`` equal to VOTER_TOKEN_AUDIENCE and, optionally, ``posts``: the post
ids it may vote on, a JSON list of strings (any other shape refuses the
token). VOTER_TOKEN_ANONYMOUS decides whether votes that name
no voter are still taken.
"""
import re
import time

import jwt
from nameko.exceptions import ConfigurationError

from services.gateway.exceptions import (
    VoterTokenExpired,
    VoterTokenInvalid,
    VoterTokenMissing,
    VoterTokenWrongAudience,
    VoterTokenWrongPost,
    VoterTokenWrongVoter,
)
from services.platform.operator import bearer_token
from services.rules import ID_PATTERN
from services.settings import FromSettings, Settings

MAX_VERIFIED = 10_000  # tokens whose claims are kept, about 3 MB at most
_POST_ID = re.compile(ID_PATTERN)


class VoterTokens:
    """Checks the voter named by a request against its bearer token."""

    enabled = True

    def __init__(self, key, algorithm, audience, anonymous):
        self.key, self.algorithm = key, algorithm
        self.audience, self.anonymous = audience, anonymous
        # token -> (exp, claims), once verified: a voter's votes carry the
        # same token until it expires, and verifying costs more than the
        # rest of a vote's checks; the same bytes verify the same, but for
        # the time
        self.verified = {}

    def claims(self, environ):
        token = bearer_token(environ)
        if token is None:
            raise VoterTokenMissing(
                "a voterId needs an Authorization: Bearer voter token")
        known = self.verified.get(token)
        if known is None:
            claims = self._verify(token)
            if len(self.verified) >= MAX_VERIFIED:
                del self.verified[next(iter(self.verified))]
            self.verified[token] = (int(claims["exp"]), claims)
            return claims
        expires, claims = known
        if expires <= time.time():  # as PyJWT's check, no leeway
            del self.verified[token]
            raise VoterTokenExpired("the voter token has expired")
        return claims

    def _verify(self, token):
        claims = self._decode(token)
        posts = claims.get("posts")
        if posts is not None:
            # a string is iterable too: "348" would cover posts 3, 4 and 8
            if not (isinstance(posts, list) and all(
                    isinstance(post, str) and _POST_ID.fullmatch(post) for post in posts)):
                raise VoterTokenInvalid(
                    "the voter token's posts claim must be a list of post ids")
            claims["posts"] = frozenset(posts)
        return claims

    def _decode(self, token):
        try:
            return jwt.decode(
                token, self.key, algorithms=[self.algorithm],
                audience=self.audience,
                options={"require": ["sub", "exp", "aud"]})
        except jwt.ExpiredSignatureError:
            raise VoterTokenExpired("the voter token has expired") from None
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
            if isinstance(exc, jwt.MissingRequiredClaimError) and exc.claim != "aud":
                raise VoterTokenInvalid(
                    "the voter token has no {} claim".format(exc.claim)) from None
            raise VoterTokenWrongAudience(
                "the voter token is not for audience {!r}".format(
                    self.audience)) from None
        except jwt.InvalidTokenError:
            raise VoterTokenInvalid(
                "the voter token is malformed or its signature does not match"
            ) from None

    def check_votes(self, environ, votes):
        """Raises unless every vote naming a voter is covered by the token;
        anonymous votes pass only if the policy allows them."""
        named = [vote for vote in votes if vote.voterId is not None]
        if len(named) < len(votes) and not self.anonymous:
            if bearer_token(environ) is None:
                raise VoterTokenMissing("anonymous votes are not accepted")
            raise VoterTokenWrongVoter("every vote must name the token's voter")
        if not named:
            return
        claims = self.claims(environ)
        posts = claims.get("posts")
        for vote in named:
            if vote.voterId != str(claims["sub"]):
                raise VoterTokenWrongVoter(
                    "the voter token is for another voter")
            if posts is not None and vote.postId not in posts:
                raise VoterTokenWrongPost(
                    "the voter token does not cover post {}".format(vote.postId))

    def check_voter(self, environ, voter_id):
        if voter_id is None:
            return
        claims = self.claims(environ)
        if voter_id != str(claims["sub"]):
            raise VoterTokenWrongVoter("the voter token is for another voter")


class Unchecked:
    """Tokens off: every request passes, as before."""

    enabled = False

    def check_votes(self, environ, votes):
        pass

    def check_voter(self, environ, voter_id):
        pass


def from_settings(settings):
    secret, public_key = settings.voter_token_secret, settings.voter_token_public_key
    if secret and public_key:
        raise ConfigurationError(
            "set VOTER_TOKEN_SECRET or VOTER_TOKEN_PUBLIC_KEY, not both")
    if not (secret or public_key):
        return Unchecked()
    if secret:
        algorithm, key = "HS256", secret
    else:
        algorithm = settings.voter_token_algorithm
        key = public_key.replace("\\n", "\n")
    return VoterTokens(key, algorithm, settings.voter_token_audience,
                       settings.voter_token_anonymous == "allow")


def from_config(config):
    return from_settings(Settings(config))


def VoterTokenChecker():
    """Injects the configured VoterTokens (or Unchecked when off)."""
    return FromSettings(from_settings)
