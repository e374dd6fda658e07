"""The rules of deploy/prometheus and the queries of deploy/grafana, and
the metric names they read (PromQL parsed roughly: enough to find names)."""
import json
import re

import yaml

from tests.deploy.conftest import DEPLOY

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "votes-dashboard.json"
# names the services export start so; the others are Prometheus's own
# (up) or RabbitMQ's (rabbitmq_prometheus)
OWN_PREFIXES = ("gateway_", "votes_", "http_", "amqp_", "process_")
EXTERNAL = {
    "up",  # made by Prometheus for each target
    "rabbitmq_queue_messages_ready",  # rabbitmq_prometheus, /metrics/per-object
    "rabbitmq_queue_consumers",
}
# what Grafana puts in place of its variables before the query is sent
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_NAME = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?")
_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def rule_files():
    return sorted((PROMETHEUS / "rules").glob("*.yml"))


def rules():
    return [rule for path in rule_files()
            for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerts():
    return [rule for rule in rules() if "alert" in rule]


def recorded():
    """Recording rule name -> its expression."""
    return {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs():
    """Every query of the dashboard, with Grafana's variables filled in."""
    exprs = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs.append(expr)
    return exprs


def selectors(expr):
    """(metric name, label names matched) of each series selector; names
    with a colon are recording rules', resolved by the caller."""
    text = _GROUPING.sub(" ", _RANGE.sub(" ", expr))
    text = _STRING.sub('""', text)
    found = []
    for match in _NAME.finditer(text):
        name, matchers = match.group(1), match.group(2)
        if matchers is None and text[match.end(1):].lstrip().startswith("("):
            continue  # a function or an aggregation
        labels = set(_LABEL.findall(matchers or ""))
        found.append((name, labels))
    return found


def is_metric(name):
    """A metric's name (not a keyword such as ``or``, nor a recording rule's)."""
    return name.startswith(OWN_PREFIXES) or name.startswith("rabbitmq_") or name in EXTERNAL


def metric_names(expr):
    """The metric names ``expr`` reads, recording rules followed to the
    metrics they read."""
    names = set()
    for name, _ in selectors(expr):
        if ":" in name:
            names |= metric_names(recorded()[name])
        elif is_metric(name):
            names.add(name)
    return names


def used_selectors():
    """Every (metric, label names) the rules and the dashboard read."""
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    return [(name, labels) for expr in exprs for name, labels in selectors(expr)
            if is_metric(name)]


def all_metric_names():
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    return set().union(*(metric_names(expr) for expr in exprs))
