"""The live page in a real Chromium against real `nameko run` processes of
both services (fixtures in conftest.py).

SAVE_SCREENSHOT=1 writes the screenshots to docs/ (live.png and
live-desktop.png at desktop width, live-phone.png at phone width; commit
them when the page changes); otherwise they go to the test's tmp_path.
"""
import itertools
import os
import re
import time
import uuid
from pathlib import Path

import requests
from nameko.standalone.rpc import ServiceRpcProxy
from playwright.sync_api import expect

from services import contracts

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
UPDATE_BOUND = 2.0      # seconds from a 202 to the page showing it
RECONNECT_BOUND = 20.0  # seconds for the page to be live again after a restart
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1000, "height": 900}
# records the page's CSP violations from its first script on
CSP_WATCH = ("window.cspViolations = []; document.addEventListener("
             "'securitypolicyviolation', function (e) {"
             " window.cspViolations.push(e.violatedDirective); });")


# when the polite live region's text changed (ms since the page started)
ANNOUNCEMENTS = (
    "window.announced = []; document.addEventListener('DOMContentLoaded', function () {"
    " new MutationObserver(function () { window.announced.push(performance.now()); })"
    ".observe(document.getElementById('announce'),"
    " {childList: true, characterData: true, subtree: true}); });")


def vote(cluster, post_id, score, voter_id=None):
    body = {"postId": post_id, "score": score}
    if voter_id:
        body["voterId"] = voter_id
    response = requests.post(cluster.base_url + "/vote", json=body, timeout=10,
                             headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return time.monotonic()


def wait_counted(cluster, post_id, upvote, downvote=0, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = cluster.redis.hmget(contracts.post_key(post_id), "upvote", "downvote")
        if counts == [str(upvote), str(downvote)]:
            return
        time.sleep(0.05)
    raise AssertionError("{} not counted: {}".format(post_id, counts))


def row(page, post_id):
    return page.locator('#top li[data-post="{}"]'.format(post_id))


def test_live_page(cluster, browser, tmp_path):
    cluster.start_votes()
    gateway = cluster.start_gateway()
    for _ in range(3):
        vote(cluster, "alpha", 1)
    vote(cluster, "beta", 1)
    wait_counted(cluster, "alpha", 3)
    wait_counted(cluster, "beta", 1)

    page = browser.new_page(viewport=PHONE)
    # the page's Content-Security-Policy must let the page do all it does
    page.add_init_script(CSP_WATCH)
    page.add_init_script(ANNOUNCEMENTS)
    response = page.goto(cluster.base_url + "/")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert (response.headers["x-frame-options"], response.headers["referrer-policy"],
            response.headers["x-content-type-options"]) == ("DENY", "no-referrer", "nosniff")
    status = page.locator("#status")
    expect(status).to_have_attribute("data-state", "live", timeout=10000)
    expect(row(page, "alpha").locator(".upvote")).to_have_text("3")
    expect(row(page, "beta").locator(".upvote")).to_have_text("1")
    # readable at phone width: nothing wider than the screen
    assert page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth")
    page.evaluate("window.notReloaded = true")

    # up on beta, as this browser's voter: its count changes
    up = row(page, "beta").locator("button.up")
    up.click()
    expect(row(page, "beta").locator(".upvote")).to_have_text("2")
    expect(up).to_have_attribute("aria-pressed", "true")
    voter_id = page.evaluate("localStorage.getItem('votes.voterId')")
    assert voter_id
    # with the keyboard: the other button switches the vote, again retracts
    down = row(page, "beta").locator("button.down")
    down.focus()
    page.keyboard.press("Enter")
    expect(row(page, "beta").locator(".upvote")).to_have_text("1")
    expect(row(page, "beta").locator(".downvote")).to_have_text("1")
    expect(down).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Space")
    expect(row(page, "beta").locator(".downvote")).to_have_text("0")
    expect(down).to_have_attribute("aria-pressed", "false")
    wait_counted(cluster, "beta", 1, 0)

    # votes from elsewhere show within UPDATE_BOUND, without a reload
    for _ in range(2):
        vote(cluster, "alpha", 1)
    sent = vote(cluster, "alpha", -1)
    expect(row(page, "alpha").locator(".upvote")).to_have_text(
        "5", timeout=UPDATE_BOUND * 1000)
    expect(row(page, "alpha").locator(".downvote")).to_have_text(
        "1", timeout=UPDATE_BOUND * 1000)
    assert time.monotonic() - sent <= UPDATE_BOUND + 0.5
    vote(cluster, "gamma", 1)  # a new post enters the top
    expect(row(page, "gamma").locator(".upvote")).to_have_text(
        "1", timeout=UPDATE_BOUND * 1000)
    assert page.evaluate("window.notReloaded === true")

    # the gateway dies: the page says so, votes land meanwhile (through
    # the votes service's RPC), and once it is back the page shows them
    gateway.kill()
    expect(status).to_have_attribute("data-state", "reconnecting", timeout=10000)
    expect(status).to_contain_text("disconnected")
    with ServiceRpcProxy("votes", {"AMQP_URI": cluster.amqp_uri},
                         timeout=10) as votes:
        for _ in range(4):
            votes.vote("gamma", 1)
    cluster.start_gateway()
    expect(status).to_have_attribute("data-state", "live", timeout=RECONNECT_BOUND * 1000)
    expect(row(page, "gamma").locator(".upvote")).to_have_text("5")
    expect(row(page, "alpha").locator(".upvote")).to_have_text("5")
    expect(page.locator("#top li").first).to_have_attribute("data-post", "gamma")
    assert page.evaluate("window.notReloaded === true")

    # and it is live again
    vote(cluster, "beta", 1)
    expect(row(page, "beta").locator(".upvote")).to_have_text(
        "2", timeout=UPDATE_BOUND * 1000)

    # following any post, from the box and with the keyboard
    page.locator("#follow-id").fill("alpha")
    page.keyboard.press("Enter")
    followed = page.locator('#followed li[data-post="alpha"]')
    expect(followed.locator(".upvote")).to_have_text("5")
    expect(status).to_have_attribute("data-state", "live", timeout=10000)
    # its chart: a point now, one more for each change of its score
    chart = followed.locator("svg.spark")
    expect(chart).to_have_attribute("data-points", "1")
    for expected in (6, 7, 8):
        vote(cluster, "alpha", 1)
        expect(followed.locator(".upvote")).to_have_text(
            str(expected), timeout=UPDATE_BOUND * 1000)
    expect(chart).to_have_attribute("data-points", "4")
    assert len(chart.locator("polyline").get_attribute("points").split()) >= 4
    # the votes per second the page saw: some, with a bar
    expect(page.locator("#rate rect.bar").first).to_be_attached()
    expect(page.locator("#rate-text")).not_to_have_text(re.compile(r"^0(\.0)? "))

    # a post nobody voted on: said plainly
    page.locator("#follow-id").fill("no-such-post")
    page.keyboard.press("Enter")
    expect(page.locator('#followed li[data-post="no-such-post"] .missing')).to_have_text(
        "There is no post no-such-post yet: nobody has voted on it. "
        "It shows here once someone does.")

    # spoken politely, as summaries at most every 5 s, never per event
    announce = page.locator("#announce")
    expect(announce).to_have_attribute("aria-live", "polite")
    page.wait_for_function("() => window.announced.length > 0", timeout=7000)
    expect(announce).not_to_be_empty()
    times = page.evaluate("window.announced")
    assert all(b - a >= 4900 for a, b in itertools.pairwise(times)), times
    assert page.locator(".counts[aria-live], li [aria-live]").count() == 0
    # still no wider than a phone, charts and messages included
    assert page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth")

    assert page.evaluate("window.cspViolations") == []
    save = os.environ.get("SAVE_SCREENSHOT") == "1"
    folder = DOCS if save else tmp_path
    page.screenshot(path=str(folder / "live-phone.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(folder / "live-desktop.png"), full_page=True)
    if save:
        page.screenshot(path=str(DOCS / "live.png"), full_page=True)
