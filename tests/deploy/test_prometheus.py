"""deploy/prometheus and deploy/grafana, checked with the real promtool
(Debian's prometheus package; make test installs it): the scrape config,
the rules, their unit tests (deploy/prometheus/tests), an alert for each
item of "What to watch" (docs/operations.md), and every query of the
dashboard."""
import re
import shutil

import pytest
import yaml

from tests.deploy import promql
from tests.deploy.conftest import ROOT, run, tool

CONFIG = promql.PROMETHEUS / "prometheus.yml"
VOTES_QUEUE = "evt-gateway-vote_cast--votes.handle_vote_cast"
TOKEN_FILE = "/etc/prometheus/secrets/operator-token"


def promtool(*args):
    return run([tool("promtool"), *map(str, args)])


def watch_list():
    """The items of "What to watch" in docs/operations.md."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### What to watch\n", 1)[1].split("\n#", 1)[0]
    items = re.split(r"\n- ", "\n" + section.strip())
    return [item for item in items if item.strip()]


def alert_exprs():
    """Each alert's expression, its recording rules written out."""
    exprs = {}
    for rule in promql.alerts():
        expr = rule["expr"]
        for name, recorded_expr in promql.recorded().items():
            expr = expr.replace(name, "({})".format(recorded_expr))
        exprs[rule["alert"]] = expr
    return exprs


def test_the_scrape_config_is_valid(tmp_path):
    """As Prometheus would load it, with the token file where it says."""
    token = tmp_path / "operator-token"
    token.write_text("a-token\n")
    shutil.copytree(promql.PROMETHEUS / "rules", tmp_path / "rules")
    config = yaml.safe_load(CONFIG.read_text())
    for job in config["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = promtool("check", "config", tmp_path / "prometheus.yml")
    assert "SUCCESS: 2 rule files found" in out


def test_both_services_are_scraped_with_the_operator_token():
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"gateway", "votes", "rabbitmq"}
    for name, port in (("gateway", 9101), ("votes", 9100)):
        job = jobs[name]
        assert job["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_FILE}
        [target] = job["dns_sd_configs"]
        assert target["port"] == port
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"
    assert config["rule_files"] == ["rules/*.yml"]


def test_the_rules_are_valid():
    out = promtool("check", "rules", *promql.rule_files())
    assert out.count("SUCCESS") == len(promql.rule_files())


def test_the_rules_pass_their_unit_tests():
    tests = sorted((promql.PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    out = promtool("test", "rules", *tests)
    assert out.count("SUCCESS") == len(tests)


def test_every_alert_is_unit_tested_firing_and_quiet():
    tested = {}
    for path in (promql.PROMETHEUS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    names = [rule["alert"] for rule in promql.alerts()]
    assert len(names) == len(set(names))
    assert {name: tested.get(name) for name in names} == {name: {True, False} for name in names}


def test_every_alert_says_how_bad_and_what():
    for rule in promql.alerts():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_each_item_of_what_to_watch_has_an_alert():
    """Every metric and error kind the list names is read by an alert."""
    exprs = alert_exprs()
    items = watch_list()
    assert len(items) == 5
    for item in items:
        names = {name for name in re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", item)
                 if promql.is_metric(name)}
        if "queue.waiting" in item:
            names.add("rabbitmq_queue_messages_ready")  # what /ready reports, from RabbitMQ
        assert names, item
        for name in names:
            assert any(name in promql.metric_names(expr) for expr in exprs.values()), name
        for kind in re.findall(r"`([A-Z]+)`", item):
            assert any(re.search(r'kind=~?"[^"]*\b{}\b'.format(kind), expr)
                       for expr in exprs.values()), kind
    store_alerts = [expr for expr in exprs.values() if "votes_store_errors_total" in expr]
    assert len(store_alerts) == 3  # page now, page when it lasts, a bug


def test_votes_waiting_reads_the_votes_queue_and_readiness_reads_up():
    exprs = alert_exprs()
    assert 'queue="{}"'.format(VOTES_QUEUE) in exprs["VotesWaitingInQueue"]
    assert 'queue="{}"'.format(VOTES_QUEUE) in exprs["VotesQueueHasNoConsumer"]
    assert 'status=~"5.."' in exprs["GatewayServerErrors"]
    assert promql.metric_names(exprs["GatewayRateLimiterFailingOpen"]) == {
        "gateway_rate_limit_errors_total"}
    assert exprs["GatewayAbsent"] == 'absent(up{job="gateway"} == 1)'
    assert exprs["VotesServiceAbsent"] == 'absent(up{job="votes"} == 1)'


def test_the_dashboard_has_its_panels():
    dashboard = promql.dashboard()
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource", "datasource", "prometheus")
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids)
    reads = {title: set().union(*(promql.metric_names(target["expr"])
                                  for target in panel["targets"]))
             for panel in panels for title in [panel["title"]]}
    wanted = {  # votes accepted and applied, the queue, latency, errors, the read copy
        "gateway_votes_accepted_total", "votes_applied_total", "rabbitmq_queue_messages_ready",
        "gateway_http_request_duration_seconds_bucket", "votes_apply_duration_seconds_bucket",
        "gateway_http_request_duration_seconds_count", "votes_store_errors_total",
        "votes_dead_lettered_total", "gateway_read_cache_total"}
    assert wanted <= set().union(*reads.values())
    assert reads["Read copy hit ratio"] == {"gateway_read_cache_total"}


def test_every_dashboard_query_parses(tmp_path):
    """promtool parses each query as it would a rule's."""
    exprs = promql.dashboard_exprs()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:query_{}".format(number), "expr": expr}
        for number, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    assert "SUCCESS: {} rules found".format(len(exprs)) in promtool("check", "rules", path)


@pytest.mark.parametrize("expr,names", [
    ('sum by (le) (rate(votes_apply_duration_seconds_bucket{job="votes"}[5m])) or vector(0)',
     {"votes_apply_duration_seconds_bucket"}),
    ('job:gateway_http_5xx:ratio_rate5m > 0.01', {"gateway_http_request_duration_seconds_count"}),
    ('max(rabbitmq_queue_messages_ready{queue="evt-gateway-vote_cast--votes.x"})',
     {"rabbitmq_queue_messages_ready"}),
])
def test_the_rough_parser_finds_the_names(expr, names):
    assert promql.metric_names(expr) == names
