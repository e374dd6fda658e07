"""Every metric the alert and recording rules (deploy/prometheus) and the
dashboard (deploy/grafana) read exists: a real gateway and a real votes
service, each a ``nameko run`` process on the settings of
deploy/kubernetes (operator port, operator token), are scraped after a
vote and a read, as Prometheus would scrape them."""
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from harness.process import VOTES, free_port, wait_until
from tests.deploy import promql
from tests.edge.conftest import start_service

TOKEN = "metric-names-operator-token"
# series names a family of each type is scraped as
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "summary": ("_sum", "_count", ""), "untyped": ("",)}
# which process exports which names (http_* and amqp_* come from the
# shared platform: both)
OWNER = {"gateway_": ("gateway",), "votes_": ("votes",), "http_": ("gateway", "votes"),
         "amqp_": ("gateway", "votes"), "process_": ("gateway", "votes")}


@pytest.fixture
def services(rabbit_config, single_redis_uri, tmp_path):
    """The gateway (its /metrics on OPERATOR_ADDRESS) and the votes service
    (on METRICS_ADDRESS), both behind OPERATOR_TOKEN."""
    amqp = rabbit_config["AMQP_URI"]
    operator_port = free_port()
    gateway = start_service(tmp_path, amqp, single_redis_uri, limits={
        "OPERATOR_ADDRESS": "127.0.0.1:{}".format(operator_port), "OPERATOR_TOKEN": TOKEN})
    try:
        votes = start_service(tmp_path, amqp, single_redis_uri, module=VOTES, name="votes",
                              port_key="METRICS_ADDRESS", limits={"OPERATOR_TOKEN": TOKEN})
    except BaseException:
        gateway.process.stop()
        raise
    yield {"gateway": gateway, "votes": votes,
           "urls": {"gateway": "http://127.0.0.1:{}/metrics".format(operator_port),
                    "votes": votes.base_url + "/metrics"}}
    gateway.process.stop()
    votes.process.stop()


def scrape(url):
    """name -> the label names of its samples, for every series name the
    page declares (a family with no sample yet declares its names too)."""
    response = requests.get(url, headers={"Authorization": "Bearer " + TOKEN}, timeout=10)
    assert response.status_code == 200, (url, response.status_code, response.text)
    series = {}
    for family in text_string_to_metric_families(response.text):
        for suffix in SUFFIXES[family.type]:
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.fixture
def scraped(services):
    """Both pages after a vote applied, a refused vote and two reads."""
    gateway = services["gateway"]
    post_id = "metric-names-1"
    assert gateway.get("/vote", params={"postId": post_id, "score": 1}).status_code == 202
    assert gateway.get("/vote", params={"postId": post_id, "score": 9}).status_code == 400

    def counted():
        answer = gateway.get("/vote-counts", params={"postId": post_id})
        return answer.status_code == 200 and answer.json()

    wait_until(counted, 15, "the vote counted")
    assert gateway.get("/vote-counts", params={"postId": post_id}).status_code == 200
    return {name: scrape(url) for name, url in services["urls"].items()}


def owners(name):
    for prefix, processes in OWNER.items():
        if name.startswith(prefix):
            return processes
    return ()


def test_every_metric_and_label_the_rules_and_dashboard_read_exists(services, scraped):
    """One pair of processes (about 10 s to start) for every check."""
    for url in services["urls"].values():
        assert requests.get(url, timeout=10).status_code == 401  # the token is needed

    names = promql.all_metric_names()
    external = {name for name in names if not owners(name)}
    # not the services': Prometheus's own, and RabbitMQ's rabbitmq_prometheus
    assert external == promql.EXTERNAL
    missing = sorted((name, process) for name in names for process in owners(name)
                     if name not in scraped[process])
    assert missing == []
    assert len(names) - len(external) >= 15
    # not vacuous: a name no service exports, or the other one's, is missing
    assert "votes_appplied_total" not in scraped["votes"]
    assert "gateway_votes_accepted_total" not in scraped["votes"]

    # a selector on a label the series do not have matches nothing,
    # silently: each one used is on the series scraped (those with samples)
    checked = set()
    for name, labels in promql.used_selectors():
        for process in owners(name):
            present = scraped[process][name]
            if present and labels:
                assert labels <= present, (name, process, labels, present)
                checked.add(name)
    # votes_store_errors_total{kind} has a series only once Redis fails
    assert checked == {"gateway_http_request_duration_seconds_count",
                       "gateway_read_cache_total", "gateway_votes_refused_total"}
