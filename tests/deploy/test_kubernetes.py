"""deploy/kubernetes: each overlay built with kubectl's kustomize, every
object validated against the Kubernetes 1.30 API schemas
(kubernetes-validate, offline), and the properties the deployment relies
on read from the objects themselves."""
import re
from functools import cache

import kubernetes_validate
import pytest
import yaml

import services
from tests.deploy import promql
from tests.deploy.conftest import DEPLOY, run, tool

OVERLAYS = ("dev", "production")
KUBERNETES_VERSION = "1.30.0"
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
APPS = ("gateway", "votes")
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# user:password@ in a URI
URI_CREDENTIALS = re.compile(r"://[^/@\s:]*:[^/@\s]+@")
# the Secrets production expects to exist (made with kubectl create secret)
PRODUCTION_SECRETS = {"votes-brokers", "votes-operator", "rabbitmq-auth", "redis-auth",
                      "gateway-tls"}


@cache
def build(overlay):
    text = run([tool("kubectl"), "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)])
    return text, [obj for obj in yaml.safe_load_all(text) if obj]


def objects(overlay, kind=None):
    return [obj for obj in build(overlay)[1] if kind is None or obj["kind"] == kind]


def one(overlay, kind, name):
    found = [obj for obj in objects(overlay, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, "{} {}/{}: {} found".format(overlay, kind, name, len(found))
    return found[0]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"]["labels"]


def containers(workload):
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def workloads(overlay):
    return [obj for obj in objects(overlay) if obj["kind"] in WORKLOADS]


def app(overlay, name):
    return one(overlay, "Deployment", name)


def selects(selector, labels):
    """Does a label selector (matchLabels, matchExpressions In) pick ``labels``?"""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def config_port(overlay, key):
    config = one(overlay, "ConfigMap", "votes-config")["data"]
    return int(config[key].rsplit(":", 1)[1])


def named_port(container, port):
    if isinstance(port, int):
        return port
    ports = {entry["name"]: entry["containerPort"] for entry in container.get("ports", [])}
    assert port in ports, "{} has no port named {}".format(container["name"], port)
    return ports[port]


def probe_targets(probe):
    """What a probe asks: (path, port) for httpGet, the command's words for exec."""
    if "httpGet" in probe:
        return [probe["httpGet"]["path"], str(probe["httpGet"]["port"])]
    if "exec" in probe:
        return probe["exec"]["command"]
    return [str(probe.get("tcpSocket", {}).get("port"))]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_kubernetes_1_30(overlay):
    problems = []
    for obj in objects(overlay):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append("{} {}: {} at {}".format(
                obj["kind"], obj["metadata"]["name"], exc.message, list(exc.absolute_path)))
    assert problems == []
    assert len(objects(overlay)) > 15


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_in_the_overlay_namespace(overlay):
    [namespace] = objects(overlay, "Namespace")
    cluster_wide = {"Namespace"}
    outside = [(obj["kind"], obj["metadata"]["name"]) for obj in objects(overlay)
               if obj["kind"] not in cluster_wide
               and obj["metadata"].get("namespace") != namespace["metadata"]["name"]]
    assert outside == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_base_objects_are_all_there(overlay):
    for name in APPS:
        app(overlay, name)
    service = one(overlay, "Service", "gateway")
    gateway_labels = pod_labels(app(overlay, "gateway"))
    assert selects({"matchLabels": service["spec"]["selector"]}, gateway_labels)
    ingress = one(overlay, "Ingress", "gateway")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]]
    assert backends == [{"name": "gateway", "port": {"name": "http"}}]
    [service_port] = service["spec"]["ports"]
    assert service_port["name"] == "http"
    gateway_container = containers(app(overlay, "gateway"))[0]
    assert named_port(gateway_container, service_port["targetPort"]) \
        == config_port(overlay, "WEB_SERVER_ADDRESS")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_drives_the_gateway_deployment(overlay):
    [hpa] = objects(overlay, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(metric["type"] == "Resource" for metric in hpa["spec"]["metrics"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_has_a_disruption_budget(overlay):
    budgets = objects(overlay, "PodDisruptionBudget")
    for name in APPS:
        labels = pod_labels(app(overlay, name))
        covering = [pdb for pdb in budgets if selects(pdb["spec"]["selector"], labels)]
        assert len(covering) == 1, name
        spec = covering[0]["spec"]
        # a budget that lets one go at a time never blocks a drain
        assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable", 0) \
            < app(overlay, name)["spec"]["replicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_runs_unprivileged_with_limits(overlay):
    for workload in workloads(overlay):
        where = "{} {}".format(workload["kind"], workload["metadata"]["name"])
        pod = pod_spec(workload)["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in containers(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert security.get("runAsUser", pod["runAsUser"]) > 0, where
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert set(resources[bound]) >= {"cpu", "memory"}, (where, bound)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", APPS)
def test_the_services_run_as_the_image_user_on_a_read_only_root(overlay, name):
    workload = app(overlay, name)
    spec = pod_spec(workload)
    assert spec["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert spec["automountServiceAccountToken"] is False
    [container] = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    [volume] = [v for v in spec["volumes"] if v["name"] == tmp[0]["name"]]
    assert "emptyDir" in volume
    assert container["command"][-1] == "services.{}.service".format(name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_are_those_the_settings_name(overlay):
    [gateway] = pod_spec(app(overlay, "gateway"))["containers"]
    [votes] = pod_spec(app(overlay, "votes"))["containers"]
    assert named_port(gateway, "http") == config_port(overlay, "WEB_SERVER_ADDRESS")
    assert named_port(gateway, "operator") == config_port(overlay, "OPERATOR_ADDRESS")
    assert named_port(votes, "metrics") == config_port(overlay, "METRICS_ADDRESS")
    assert [port["name"] for port in votes["ports"]] == ["metrics"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name,port", [("gateway", "http"), ("votes", "metrics")])
def test_liveness_asks_health_of_the_process(overlay, name, port):
    [container] = pod_spec(app(overlay, name))["containers"]
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": port}, probe
    # a process waiting for its brokers answers 200 on /health: the
    # startup probe gives it a minute before liveness may restart it
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", APPS)
def test_readiness_asks_for_status_ok_on_health_and_never_ready(overlay, name):
    """/ready asks the votes service (an RPC) and Redis: as a readiness
    probe, one votes outage would take every gateway out of the Service.
    Readiness reads /health's status, which is "ok" only once the process
    has its brokers."""
    [container] = pod_spec(app(overlay, name))["containers"]
    words = probe_targets(container["readinessProbe"])
    assert not any("/ready" in word for word in words), words
    port = config_port(overlay, "WEB_SERVER_ADDRESS" if name == "gateway" else "METRICS_ADDRESS")
    assert words[-1] == "http://127.0.0.1:{}/health".format(port)
    assert '"status") != "ok"' in words[2]


def ingress_rules(overlay, labels):
    """Every (rule, policy name) of the NetworkPolicies that select ``labels``."""
    return [(rule, policy["metadata"]["name"])
            for policy in objects(overlay, "NetworkPolicy")
            if selects(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("ingress", [])]


def rule_ports(rule):
    return sorted(port["port"] for port in rule["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default(overlay):
    deny = [policy for policy in objects(overlay, "NetworkPolicy")
            if policy["spec"]["podSelector"] == {}
            and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not policy["spec"].get("ingress") and not policy["spec"].get("egress")]
    assert len(deny) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_http_port_is_open_to_all(overlay):
    """A rule with no ``from`` admits anyone: only the gateway's API port
    has one. The rest admit pods of this namespace, or the monitoring
    namespace, and nothing else."""
    for workload in workloads(overlay):
        labels = pod_labels(workload)
        for rule, policy in ingress_rules(overlay, labels):
            sources = rule.get("from")
            if not sources:
                assert labels["app.kubernetes.io/name"] == "gateway", policy
                assert rule_ports(rule) == [config_port(overlay, "WEB_SERVER_ADDRESS")]
                continue
            for source in sources:
                assert set(source) <= {"podSelector", "namespaceSelector"}, policy
                if "namespaceSelector" in source:
                    assert source["namespaceSelector"] == {"matchLabels": MONITORING}, policy


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_ports_only_from_monitoring(overlay):
    expected = {"gateway": {config_port(overlay, "WEB_SERVER_ADDRESS"): "anyone",
                            config_port(overlay, "OPERATOR_ADDRESS"): "monitoring"},
                "votes": {config_port(overlay, "METRICS_ADDRESS"): "monitoring"}}
    for name, ports in expected.items():
        opened = {}
        for rule, _ in ingress_rules(overlay, pod_labels(app(overlay, name))):
            who = "anyone" if not rule.get("from") else (
                "monitoring" if rule["from"] == [{"namespaceSelector": {"matchLabels": MONITORING}}]
                else "pods")
            for port in rule_ports(rule):
                opened.setdefault(port, set()).add(who)
        assert opened == {port: {who} for port, who in ports.items()}, name


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", APPS)
def test_services_may_reach_brokers_and_dns_only(overlay, name):
    labels = pod_labels(app(overlay, name))
    ports = set()
    for policy in objects(overlay, "NetworkPolicy"):
        if selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("egress", []):
                ports.update((port.get("protocol", "TCP"), port["port"]) for port in rule["ports"])
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 5672), ("TCP", 5671),
                     ("TCP", 6379), ("TCP", 6380)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_broker_pod_admits_the_services(overlay):
    """Under the default deny, a broker no policy opens is cut off."""
    for workload in objects(overlay, "StatefulSet"):
        labels = pod_labels(workload)
        admitted = set()
        for rule, _ in ingress_rules(overlay, labels):
            for source in rule.get("from", []):
                for name in APPS:
                    if "podSelector" in source and selects(
                            source["podSelector"], pod_labels(app(overlay, name))):
                        admitted.add(name)
        assert admitted == set(APPS), workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", APPS)
def test_credentials_come_from_secrets(overlay, name):
    [container] = pod_spec(app(overlay, name))["containers"]
    secrets = [source["secretRef"]["name"] for source in container["envFrom"]
               if "secretRef" in source]
    configs = [source["configMapRef"]["name"] for source in container["envFrom"]
               if "configMapRef" in source]
    assert len(secrets) == 2 and len(configs) == 1
    config = one(overlay, "ConfigMap", configs[0])["data"]
    assert not {"AMQP_URI", "REDIS_URI", "OPERATOR_TOKEN"} & set(config)
    assert "env" not in container
    made = {obj["metadata"]["name"] for obj in objects(overlay, "Secret")}
    if overlay == "dev":
        assert set(secrets) <= made  # generated, with their hash suffix
    else:
        assert set(secrets) == {"votes-brokers", "votes-operator"}


def test_dev_generates_its_made_up_credentials():
    keys = {}
    for secret in objects("dev", "Secret"):
        keys.update(secret["data"])
    assert {"AMQP_URI", "REDIS_URI", "OPERATOR_TOKEN", "RABBITMQ_DEFAULT_PASS",
            "REDIS_PASSWORD"} <= set(keys)


def test_production_commits_no_credential():
    text, _ = build("production")
    assert objects("production", "Secret") == []
    assert not URI_CREDENTIALS.search(text)
    assert "guest" not in text
    referenced = set()
    for workload in workloads("production"):
        for container in containers(workload):
            referenced.update(source["secretRef"]["name"]
                              for source in container.get("envFrom", []) if "secretRef" in source)
            referenced.update(entry["valueFrom"]["secretKeyRef"]["name"]
                              for entry in container.get("env", [])
                              if "secretKeyRef" in entry.get("valueFrom", {}))
    for ingress in objects("production", "Ingress"):
        referenced.update(tls["secretName"] for tls in ingress["spec"].get("tls", []))
    assert referenced == PRODUCTION_SECRETS


def test_production_runs_three_of_each_spread_over_nodes_and_zones():
    for name in APPS:
        workload = app("production", name)
        assert workload["spec"]["replicas"] >= 3
        spec = pod_spec(workload)
        [spread] = spec["topologySpreadConstraints"]
        assert spread["topologyKey"] == "topology.kubernetes.io/zone"
        assert selects(spread["labelSelector"], pod_labels(workload))
        [term] = spec["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert selects(term["podAffinityTerm"]["labelSelector"], pod_labels(workload))
    [hpa] = objects("production", "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 3
    images = {container["image"] for workload in workloads("production")
              for container in containers(workload)}
    assert not any(image.endswith(":latest") or ":" not in image for image in images), images
    [app_image] = {container["image"] for name in APPS
                   for container in pod_spec(app("production", name))["containers"]}
    assert app_image.rsplit(":", 1)[1] == services.__version__


def test_production_uses_quorum_queues_on_a_three_node_rabbitmq():
    assert one("production", "ConfigMap", "votes-config")["data"]["AMQP_QUEUE_TYPE"] == "quorum"
    rabbit = one("production", "StatefulSet", "rabbitmq")
    assert rabbit["spec"]["replicas"] == 3
    config = one("production", "ConfigMap", "rabbitmq-config")["data"]
    assert "rabbitmq_peer_discovery_k8s" in config["enabled_plugins"]
    assert "rabbitmq_prometheus" in config["enabled_plugins"]
    assert "cluster_partition_handling = pause_minority" in config["cluster.conf"]
    service_name = re.search(r"k8s\.service_name = (\S+)", config["cluster.conf"]).group(1)
    suffix = re.search(r"k8s\.hostname_suffix = (\S+)", config["cluster.conf"]).group(1)
    assert suffix == ".{}.{}.svc.cluster.local".format(service_name, "votes")
    assert one("production", "Namespace", "votes")
    assert rabbit["spec"]["serviceName"] == service_name
    assert one("production", "Service", service_name)["spec"]["clusterIP"] == "None"
    [rule] = one("production", "Role", "rabbitmq-peer-discovery")["rules"][:1]
    assert rule["resources"] == ["endpoints"]
    assert pod_spec(rabbit)["serviceAccountName"] == "rabbitmq"


def test_production_redis_is_a_cluster_of_three_masters_with_replicas():
    redis = one("production", "StatefulSet", "redis-cluster")
    assert redis["spec"]["replicas"] == 6
    args = pod_spec(redis)["containers"][0]["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes"
    assert args[args.index("--appendonly") + 1] == "yes"
    job = one("production", "Job", "redis-cluster-create")
    script = pod_spec(job)["containers"][0]["command"][-1]
    assert "--cluster-replicas 1" in script


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_brokers_keep_their_data_on_persistent_volumes(overlay):
    sets = objects(overlay, "StatefulSet")
    assert {s["metadata"]["name"] for s in sets} == (
        {"rabbitmq", "redis"} if overlay == "dev" else {"rabbitmq", "redis-cluster"})
    for workload in sets:
        [claim] = workload["spec"]["volumeClaimTemplates"]
        mounts = {mount["mountPath"] for mount in pod_spec(workload)["containers"][0][
            "volumeMounts"] if mount["name"] == claim["metadata"]["name"]}
        assert mounts == ({"/var/lib/rabbitmq"} if "rabbitmq" in workload["metadata"]["name"]
                          else {"/data"})


def test_dev_runs_one_of_each_broker():
    for name in ("rabbitmq", "redis"):
        assert one("dev", "StatefulSet", name)["spec"]["replicas"] == 1


def test_prometheus_finds_every_production_pod_by_dns():
    """deploy/prometheus/prometheus.yml names headless Services: each is in
    production, selects the pods of its job, and has the port scraped."""
    config = yaml.safe_load((promql.PROMETHEUS / "prometheus.yml").read_text())
    [namespace] = objects("production", "Namespace")
    pods = {"gateway": app("production", "gateway"), "votes": app("production", "votes"),
            "rabbitmq": one("production", "StatefulSet", "rabbitmq")}
    for job in config["scrape_configs"]:
        [sd] = job["dns_sd_configs"]
        [name] = sd["names"]
        service_name, service_namespace = name.split(".")[:2]
        assert service_namespace == namespace["metadata"]["name"]
        service = one("production", "Service", service_name)
        assert service["spec"]["clusterIP"] == "None"  # one A record per pod
        workload = pods[job["job_name"]]
        assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(workload))
        ports = [port["containerPort"] for port in containers(workload)[0]["ports"]]
        assert sd["port"] in ports
