"""Health, readiness and metrics, as an operator sees them."""
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.service import GatewayService
from tests.conftest import HEALTH_OK
from tests.integration.test_pipeline import counts, wait_for_counts


def scrape(url):
    """{(name, labels...): value} of one /metrics page."""
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name,) + tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def delta(after, before, *key):
    return after.get(key, 0) - before.get(key, 0)



def test_health_and_ready(services, web_session):
    response = web_session.get("/health")
    assert (response.status_code, response.json()) == (200, HEALTH_OK)
    response = web_session.get("/ready")
    assert (response.status_code, response.json()) == (200, {
        "status": "ready",
        "checks": {"broker": "ok", "votes": "ok", "redis": "ok",
                   "durability": "unreplicated",
                   "queue": {"waiting": 0, "consumers": 1}}})


def test_not_ready_without_votes_service(container_factory, config, web_session):
    container_factory(GatewayService, config).start()
    web_session.get("/vote?postId=1&score=1")  # queued, nobody consumes
    started = time.monotonic()
    response = web_session.get("/ready")
    assert time.monotonic() - started < 3
    assert (response.status_code, response.json()) == (503, {
        "error": "NOT_READY",
        "message": "failing: votes",
        "checks": {"broker": "ok", "votes": "unavailable", "redis": "unknown",
                   "queue": {"waiting": 1, "consumers": 0}}})
    assert response.headers["Retry-After"] == "1"


def test_metrics_count_votes(services, web_session, config):
    gateway_url = web_session.base_url + "metrics"
    votes_url = "http://{}/metrics".format(config["METRICS_ADDRESS"])
    gateway_before, votes_before = scrape(gateway_url), scrape(votes_url)

    for score in (1, 1, -1):
        assert web_session.get("/vote?postId=m1&score={}".format(score)).status_code == 202
    assert web_session.get("/vote?postId=m1&score=5").status_code == 400
    assert web_session.post("/votes", json={"votes": []}).status_code == 400
    assert wait_for_counts(web_session, {"m1": counts("m1", 2, 1)}) == {
        "m1": counts("m1", 2, 1)}

    gateway, votes = scrape(gateway_url), scrape(votes_url)
    assert delta(gateway, gateway_before, "gateway_votes_accepted_total") == 3
    assert delta(gateway, gateway_before, "gateway_votes_refused_total",
                 ("reason", "VALIDATION_ERROR")) == 2
    assert delta(gateway, gateway_before, "gateway_http_request_duration_seconds_count",
                 ("route", "/vote"), ("status", "202")) == 3
    assert delta(votes, votes_before, "votes_applied_total") == 3
    assert delta(votes, votes_before, "votes_dead_lettered_total") == 0
    assert delta(votes, votes_before, "votes_event_votes_sum") == 3


def test_votes_health_port(services, config):
    response = requests.get("http://{}/health".format(config["METRICS_ADDRESS"]), timeout=10)
    assert (response.status_code, response.json()) == (200, HEALTH_OK)
