"""GET /'s page bytes: marked for voter tokens when they are on, with the
same inline blocks (and so the same CSP hashes) either way."""
from services.gateway import page
from services.gateway.tokens import Unchecked, VoterTokens


def test_the_page_is_marked_only_when_voter_tokens_are_on():
    plain = page.PAGE_PATH.read_bytes()
    assert page.index_html() == plain
    assert page.index_html(Unchecked()) == plain
    marked = page.index_html(VoterTokens("secret", "HS256", "votes", anonymous=False))
    assert marked == plain.replace(
        b'<html lang="en">', b'<html lang="en" data-voter-tokens="required">', 1)
    assert marked != plain
    assert page.content_security_policy(marked) == page.content_security_policy(plain)
