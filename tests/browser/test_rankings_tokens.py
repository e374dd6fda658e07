"""The live page's rankings, its accessibility (axe-core and the keyboard)
and voter tokens, in a real Chromium against real `nameko run` processes
with voter tokens required (VOTER_TOKEN_ANONYMOUS=deny) and an operator
token for PUT /posts/<id>."""
import itertools
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jwt
import requests
from nameko.standalone.rpc import ServiceRpcProxy
from playwright.sync_api import expect

from tests.browser.test_live_page import CSP_WATCH, DESKTOP, PHONE, UPDATE_BOUND

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SECRET = "browser-test-secret-0123456789abcdef"
OPERATOR_TOKEN = "browser-test-operator-token"
SETTINGS = {"VOTER_TOKEN_SECRET": SECRET, "VOTER_TOKEN_ANONYMOUS": "deny",
            "OPERATOR_TOKEN": OPERATOR_TOKEN, "HTTP_MAX_STREAMS": 2}
READ_BOUND = UPDATE_BOUND + 1.5  # a ranking is read again within 1 s of news

# (up, down) of each post; old ones are dated two days back, "fresh" is new
POSTS = {"sure": (5, 0), "many": (10, 6), "split": (4, 4), "fresh": (2, 0)}
ORDERS = {
    "top": ["sure", "many", "fresh", "split"],
    "best": ["sure", "fresh", "many", "split"],
    "controversial": ["split", "many", "fresh", "sure"],
    "hot": ["fresh", "sure", "many", "split"],
}


def voter_token(voter_id, minutes=30):
    claims = {"sub": voter_id, "aud": "votes",
              "exp": datetime.now(timezone.utc) + timedelta(minutes=minutes)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def seed(cluster):
    with ServiceRpcProxy("votes", {"AMQP_URI": cluster.amqp_uri}, timeout=10) as votes:
        for post_id, (up, down) in POSTS.items():
            for _ in range(up):
                votes.vote(post_id, 1)
            for _ in range(down):
                votes.vote(post_id, -1)
    old = int(time.time()) - 2 * 86400
    for post_id in ("sure", "many", "split"):
        response = requests.put(
            "{}/posts/{}".format(cluster.base_url, post_id), json={"createdAt": old},
            headers={"Authorization": "Bearer " + OPERATOR_TOKEN}, timeout=10)
        assert response.status_code == 200, response.text


def order(page):
    return page.locator("#top li").evaluate_all(
        "rows => rows.map(r => r.getAttribute('data-post'))")


def expect_order(page, expected, timeout=READ_BOUND):
    deadline = time.monotonic() + timeout
    while order(page) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert order(page) == expected


def serious_violations(page):
    """axe-core's serious and critical findings on the page as it is."""
    assert AXE.exists(), "no axe-core: run `make browser` (scripts/browser.py runs npm ci)"
    # evaluated through the DevTools protocol, which the page's CSP does
    # not govern (an inline <script> of it would be refused)
    page.evaluate(AXE.read_text())
    result = page.evaluate(
        "axe.run(document).then(r => ({passes: r.passes.length, violations: r.violations}))")
    assert result["passes"] > 10  # it did look at the page
    found = result["violations"]
    return [(v["id"], v["impact"], [n["target"] for n in v["nodes"]])
            for v in found if v["impact"] in ("serious", "critical")]


def test_rankings_keyboard_and_axe(cluster, browser):
    cluster.settings = SETTINGS
    cluster.start_votes()
    cluster.start_gateway()
    seed(cluster)

    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.add_init_script(CSP_WATCH)
    votes_sent = []
    page.on("request", lambda r: votes_sent.append(r.url) if "/vote" in r.url
            and "/vote-counts" not in r.url else None)
    page.goto(cluster.base_url + "/?sort=controversial")
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=10000)
    expect(page.locator("#tab-controversial")).to_have_attribute("aria-selected", "true")
    expect_order(page, ORDERS["controversial"])

    # the tabs, from the keyboard: Tab reaches the chosen one, arrows move
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "tab-controversial"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    for key, sort in (("ArrowRight", "hot"), ("Home", "top"), ("ArrowRight", "best"),
                      ("ArrowLeft", "top"), ("End", "hot"), ("ArrowRight", "top")):
        page.keyboard.press(key)
        expect(page.locator("#tab-" + sort)).to_have_attribute("aria-selected", "true")
        expect(page.locator("#tab-" + sort)).to_be_focused()
        assert page.url.endswith("/?sort=" + sort)
        expect_order(page, ORDERS[sort])
    assert page.locator('[role="tab"][tabindex="0"]').count() == 1
    assert page.locator('[role="tablist"] [role="tab"]').count() == 4
    page.go_back()  # the address keeps the choice: back is the previous one
    expect(page.locator("#tab-hot")).to_have_attribute("aria-selected", "true")
    expect_order(page, ORDERS["hot"])

    # live under a ranking the stream does not rank: five downs on "sure"
    # (5 up, 5 down) make it the most controversial
    page.locator("#tab-controversial").click()
    expect_order(page, ORDERS["controversial"])
    with ServiceRpcProxy("votes", {"AMQP_URI": cluster.amqp_uri}, timeout=10) as votes:
        for _ in range(5):
            votes.vote("sure", -1)
    expect_order(page, ["sure", "split", "many", "fresh"])
    expect(page.locator('#top li[data-post="sure"] .downvote')).to_have_text("5")

    # however fast the tabs and the votes came: a ranking read a second apart, at least
    # (the browser's own times of the reads, in ms)
    reads = page.evaluate("performance.getEntriesByType('resource')"
                          ".filter(e => e.name.includes('/posts/top?')).map(e => e.startTime)")
    assert len(reads) >= 5
    assert all(b - a >= 990 for a, b in itertools.pairwise(reads)), reads

    # no token: the arrows are off, saying why, and nothing is sent
    note = page.locator("#vote-note")
    expect(note).to_be_visible()
    expect(note).to_have_text(
        "Voting here needs a voting token from the site, and this page has none, "
        "so the arrows are off. Open the page from the site's link to vote.")
    up = page.locator('#top li[data-post="sure"] button.up')
    expect(up).to_be_disabled()
    expect(up).to_have_attribute("aria-describedby", "vote-note")
    up.click(force=True)
    assert votes_sent == []

    # axe-core: nothing serious or critical, at both widths
    assert serious_violations(page) == []
    page.set_viewport_size(PHONE)
    assert serious_violations(page) == []
    assert page.evaluate("window.cspViolations") == []
    context.close()


def test_token_vote_by_keyboard(cluster, browser):
    cluster.settings = SETTINGS
    cluster.start_votes()
    cluster.start_gateway()
    seed(cluster)
    token = voter_token("reader-7")

    # every stream the gateway may hold is taken: the page's gets 503
    # TOO_MANY_STREAMS, on which EventSource gives up for good
    held = [requests.get(cluster.base_url + "/stream?postId=split", stream=True, timeout=10)
            for _ in range(2)]
    assert [r.status_code for r in held] == [200, 200]
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.add_init_script(CSP_WATCH)
    refused = []
    page.on("response", lambda r: refused.append(r.status) if "/stream" in r.url else None)
    page.goto(cluster.base_url + "/?sort=best#token=" + token)
    # the token left the address (and so the history)
    assert page.url == cluster.base_url + "/?sort=best"
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "reconnecting", timeout=10000)
    assert set(refused) == {503}
    # the page tries again by itself: live once a stream is free
    for response in held:
        response.close()
    # a gateway learns that a stream's reader left when it writes to it
    # (the second write after the close fails): news of "split" until then
    deadline = time.monotonic() + 15
    with ServiceRpcProxy("votes", {"AMQP_URI": cluster.amqp_uri}, timeout=10) as votes:
        while status.get_attribute("data-state") != "live" and time.monotonic() < deadline:
            votes.vote("split", 1)
            votes.vote("split", -1)
            time.sleep(0.3)  # apart, so that they are announced apart
    expect(status).to_have_attribute("data-state", "live")
    assert len(refused) >= 2 and refused[-1] == 200  # tried again after the 503
    expect(page.locator("#vote-note")).to_be_hidden()
    expect_order(page, ORDERS["best"])

    # keyboard only: Tab to the tabs, Tab to the first row's up arrow, Enter
    page.keyboard.press("Tab")
    expect(page.locator("#tab-best")).to_be_focused()
    page.keyboard.press("Tab")
    first_up = page.locator('#top li[data-post="sure"] button.up')
    expect(first_up).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    expect(first_up).to_have_attribute("aria-pressed", "true")

    def counts():
        return requests.get(
            cluster.base_url + "/vote-counts", params={"postId": "sure", "voterId": "reader-7"},
            headers={"Authorization": "Bearer " + token}, timeout=10).json()
    deadline = time.monotonic() + 10
    while counts() != {"postId": "sure", "upvote": 6, "downvote": 0, "score": 6, "myVote": 1} \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts() == {"postId": "sure", "upvote": 6, "downvote": 0, "score": 6, "myVote": 1}
    expect(page.locator('#top li[data-post="sure"] .upvote')).to_have_text(
        "6", timeout=UPDATE_BOUND * 1000)
    # Space on the same arrow takes the vote back
    page.keyboard.press("Space")
    expect(first_up).to_have_attribute("aria-pressed", "false")
    expect(page.locator('#top li[data-post="sure"] .upvote')).to_have_text(
        "5", timeout=READ_BOUND * 1000)

    # a reload in the same tab keeps the token (sessionStorage), not the address
    page.reload()
    expect(page.locator("#vote-note")).to_be_hidden()
    expect(first_up).to_be_enabled()

    # an expired token handed over by a same-origin page: the arrows go off
    page.evaluate("t => window.postMessage({type: 'votes-token', token: t}, location.origin)",
                  voter_token("reader-7", minutes=-5))
    expect(page.locator("#vote-note")).to_contain_text("has expired")
    expect(first_up).to_be_disabled()
    assert page.evaluate("window.cspViolations") == []
    context.close()
