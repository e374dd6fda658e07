"""Checks of docker-compose.yml, the Dockerfile and services.healthcheck that
need no Docker engine.

tests/data/compose_spec.json is the Compose Specification JSON schema, taken
unchanged from the PyPI package docker-compose==1.29.2 (file
compose/config/compose_spec.json of docker_compose-1.29.2-py2.py3-none-any.whl,
sha256 0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac),
licensed Apache-2.0. It is vendored because that package pins PyYAML<6.
"""
import collections
import copy
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import kombu
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CLUSTER_COMPOSE_FILE = ROOT / "docker-compose.cluster.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose_spec.json"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_FILE = ROOT / "config.yml"

APPS = {
    "gateway": "services.gateway.service",
    "votes": "services.votes.service",
}
BACKING = ("rabbitmq", "redis")
ALL_SERVICES = set(APPS) | set(BACKING)
# an exact release: x.y.z, optionally followed by a variant (-management, -alpine)
EXACT_TAG = re.compile(r"^\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")


def load_compose(path=COMPOSE_FILE):
    """The file as Compose parses it, before interpolation. Not
    yaml.safe_load: importing nameko's CLI (other tests do) teaches
    SafeLoader its own ``${VAR:default}`` interpolation."""
    class ComposeLoader(yaml.SafeLoader):
        pass

    ComposeLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "!env_var"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    with open(path) as f:
        return yaml.load(f, Loader=ComposeLoader)


@pytest.fixture(scope="module")
def compose():
    return load_compose()


@pytest.fixture(scope="module")
def cluster_compose():
    return load_compose(CLUSTER_COMPOSE_FILE)


@pytest.fixture(scope="module")
def schema():
    with open(SCHEMA_FILE) as f:
        return json.load(f)


def env_of(service):
    """A service's environment as a dict, whichever form it is written in."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return env


def command_argv(service):
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def healthcheck_argv(service):
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    return test


# --- the compose file -----------------------------------------------------

def test_compose_file_is_valid_against_compose_spec(compose, schema):
    # The schema declares draft 2019-09 (as "...2019-09/schema#", a spelling
    # jsonschema does not map, so the draft is named here). Formats such as
    # "duration" are annotations only: no format_checker.
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=str)
    assert errors == [], "\n".join(e.message for e in errors)


def test_compose_schema_rejects_a_broken_file(compose, schema):
    """The validation above is not vacuous: the same schema rejects mistakes."""
    validator = jsonschema.Draft201909Validator(schema)
    for mutate in (
        lambda doc: doc["services"]["gateway"].update(helthcheck={}),
        lambda doc: doc["services"]["votes"]["depends_on"]["redis"].update(
            condition="service_ready"),
        lambda doc: doc["services"]["redis"]["healthcheck"].update(retry=3),
        lambda doc: doc.update(volume={}),
    ):
        broken = copy.deepcopy(compose)
        mutate(broken)
        assert not validator.is_valid(broken)


def test_no_version_key_and_exactly_the_expected_services(compose):
    assert "version" not in compose
    assert set(compose["services"]) == ALL_SERVICES


def test_every_service_has_a_healthcheck_and_restart_policy(compose):
    for name, service in compose["services"].items():
        healthcheck = service["healthcheck"]
        assert healthcheck.get("disable") is not True, name
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
        assert healthcheck["interval"] and healthcheck["timeout"], name
        assert healthcheck["retries"] >= 1, name
        assert service["restart"] == "unless-stopped", name


def test_no_container_name_anywhere(compose):
    for name, service in compose["services"].items():
        assert "container_name" not in service, name


def test_only_the_gateway_publishes_a_port(compose):
    published = {name: service["ports"]
                 for name, service in compose["services"].items()
                 if service.get("ports")}
    # the operator port (/metrics, /ready) on the host's loopback only
    assert published == {"gateway": ["5000:5000", "127.0.0.1:9101:9101"]}
    assert compose["services"]["gateway"]["environment"]["OPERATOR_ADDRESS"] == \
        "0.0.0.0:9101"
    assert "ports" not in compose["services"]["votes"]


def test_apps_wait_for_healthy_backing_services(compose):
    for name in APPS:
        assert compose["services"][name]["depends_on"] == {
            "rabbitmq": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name


def test_backing_images_are_pinned_to_exact_versions(compose):
    services = compose["services"]
    for name in BACKING:
        repository, _, tag = services[name]["image"].partition(":")
        assert repository == name
        assert "latest" not in tag, name
        assert EXACT_TAG.match(tag), (name, tag)
    assert services["rabbitmq"]["image"].endswith("-management")


def test_apps_share_one_image_built_from_this_repo(compose):
    gateway, votes = compose["services"]["gateway"], compose["services"]["votes"]
    assert gateway["build"] == votes["build"] == "."
    assert gateway["image"] == votes["image"]
    assert "gateway" not in gateway["image"] and "votes-app" in gateway["image"]


def test_apps_stop_gracefully(compose):
    for name in APPS:
        assert compose["services"][name]["stop_grace_period"] == "15s", name


def test_redis_persists_with_aof_on_a_named_volume(compose):
    redis = compose["services"]["redis"]
    command = " ".join(command_argv(redis))
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert redis["volumes"] == ["redis-data:/data"]
    assert "redis-data" in compose["volumes"]
    assert "redis-cli ping" in " ".join(healthcheck_argv(redis))


def test_rabbitmq_persists_on_a_named_volume_with_a_fixed_node_name(compose):
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["volumes"] == ["rabbitmq-data:/var/lib/rabbitmq"]
    assert "rabbitmq-data" in compose["volumes"]
    assert rabbitmq["hostname"] == "rabbitmq"
    test = healthcheck_argv(rabbitmq)
    assert test[1:3] == ["rabbitmq-diagnostics", "-q"]
    assert test[3] in ("ping", "check_port_connectivity", "check_running")


@pytest.mark.parametrize("name, module", sorted(APPS.items()))
def test_app_command_runs_an_importable_service_module(compose, name, module):
    argv = command_argv(compose["services"][name])
    assert argv == ["nameko", "run", "--config", "config.yml", module]
    assert "--backdoor" not in " ".join(argv)
    assert importlib.util.find_spec(module) is not None


def test_app_environment(compose):
    gateway = env_of(compose["services"]["gateway"])
    votes = env_of(compose["services"]["votes"])
    for env in (gateway, votes):
        assert env["AMQP_URI"] == "amqp://guest:guest@rabbitmq:5672/"
        assert env["REDIS_URI"] == "redis://redis:6379/0"
    assert gateway["WEB_SERVER_ADDRESS"] == "0.0.0.0:5000"
    assert votes["METRICS_ADDRESS"] == "0.0.0.0:9100"
    assert "WEB_SERVER_ADDRESS" not in votes


def test_every_app_environment_variable_is_read_by_config_yml(compose):
    config_text = CONFIG_FILE.read_text()
    for name in APPS:
        env = env_of(compose["services"][name])
        assert env, name
        unread = sorted(var for var in env if "${" + var not in config_text)
        assert unread == [], "{}: config.yml does not read {}".format(name, unread)


@pytest.mark.parametrize("name, url", [
    ("gateway", "http://127.0.0.1:5000/health"),
    ("votes", "http://127.0.0.1:9100/health"),
])
def test_app_healthchecks_use_the_healthcheck_module(compose, name, url):
    assert healthcheck_argv(compose["services"][name]) == [
        "CMD", "python", "-m", "services.healthcheck", url]


# --- docker-compose.cluster.yml: the same apps on a RabbitMQ cluster and a
# Redis Cluster --------------------------------------------------------------

REDIS_NODES = ["redis-{}".format(n) for n in range(1, 7)]
CLUSTER_CREATE = "redis-cluster-create"
RABBIT_NODES = ["rabbit1", "rabbit2", "rabbit3"]
RABBIT_CLUSTER_CONF = ROOT / "compose" / "rabbitmq-cluster.conf"
RABBIT_CONF_MOUNT = "./compose/rabbitmq-cluster.conf:/etc/rabbitmq/conf.d/30-cluster.conf:ro"


def rabbit_conf():
    """rabbitmq.conf (sysctl format) as {key: value}."""
    settings = {}
    for line in RABBIT_CLUSTER_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key.strip() not in settings, key
            settings[key.strip()] = value.strip()
    return settings


def test_cluster_compose_file_is_valid_against_compose_spec(cluster_compose, schema):
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(cluster_compose), key=str)
    assert errors == [], "\n".join(e.message for e in errors)


def test_cluster_compose_has_three_rabbit_and_six_redis_nodes(cluster_compose):
    assert "version" not in cluster_compose
    assert set(cluster_compose["services"]) == (
        set(APPS) | set(RABBIT_NODES) | {CLUSTER_CREATE} | set(REDIS_NODES))


def test_cluster_services_have_healthchecks_and_restart_policies(cluster_compose):
    for name, service in cluster_compose["services"].items():
        healthcheck = service["healthcheck"]
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
        assert healthcheck["interval"] and healthcheck["timeout"], name
        assert healthcheck["retries"] >= 1, name
        assert "container_name" not in service, name
        assert service["restart"] == ("no" if name == CLUSTER_CREATE else "unless-stopped")


def test_cluster_nodes_are_pinned_cluster_enabled_and_persistent(cluster_compose):
    services = cluster_compose["services"]
    images = {services[name]["image"] for name in REDIS_NODES + [CLUSTER_CREATE]}
    assert len(images) == 1
    repository, _, tag = images.pop().partition(":")
    assert repository == "redis" and EXACT_TAG.match(tag), tag
    for name in REDIS_NODES:
        node = services[name]
        argv = command_argv(node)
        assert argv[0] == "redis-server", name
        options = dict(zip(argv[1::2], argv[2::2], strict=True))
        assert options["--cluster-enabled"] == "yes", name
        assert options["--cluster-announce-hostname"] == node["hostname"] == name
        assert options["--appendonly"] == "yes", name
        assert node["volumes"] == ["{}-data:/data".format(name)]
        assert "{}-data".format(name) in cluster_compose["volumes"]
        assert "ports" not in node, name


def test_cluster_create_makes_three_masters_with_a_replica_each(cluster_compose):
    create = cluster_compose["services"][CLUSTER_CREATE]
    script = " ".join(create["command"])
    assert "redis-cli --cluster create" in script
    assert "--cluster-replicas 1 --cluster-yes" in script
    assert "for host in {};".format(" ".join(REDIS_NODES)) in script
    assert "cluster_state:ok" in script
    assert create["depends_on"] == {
        name: {"condition": "service_healthy"} for name in REDIS_NODES}


def test_rabbit_nodes_are_the_pinned_image_of_docker_compose_yml(compose, cluster_compose):
    single = compose["services"]["rabbitmq"]
    cookies = set()
    for name in RABBIT_NODES:
        node = cluster_compose["services"][name]
        assert node["image"] == single["image"], name
        # the node name is rabbit@<hostname>, as the config lists them
        assert node["hostname"] == name
        assert node["volumes"] == ["{}-data:/var/lib/rabbitmq".format(name),
                                   RABBIT_CONF_MOUNT]
        assert "{}-data".format(name) in cluster_compose["volumes"]
        assert "ports" not in node and "depends_on" not in node, name
        assert healthcheck_argv(node) == [
            "CMD", "rabbitmq-diagnostics", "-q", "check_running"]
        cookies.add(env_of(node)["RABBITMQ_ERLANG_COOKIE"])
        assert env_of(node)["RABBITMQ_DEFAULT_USER"] == "${RABBITMQ_USER:?set RABBITMQ_USER}"
        assert env_of(node)["RABBITMQ_DEFAULT_PASS"] == (
            "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD}")
    assert cookies == {
        "${RABBITMQ_ERLANG_COOKIE:?set RABBITMQ_ERLANG_COOKIE (openssl rand -hex 32)}"}
    assert "rabbitmq-data" not in cluster_compose["volumes"]


def test_rabbit_nodes_find_each_other_in_the_mounted_config():
    assert rabbit_conf() == {
        "cluster_formation.peer_discovery_backend": "classic_config",
        "cluster_formation.classic_config.nodes.1": "rabbit@rabbit1",
        "cluster_formation.classic_config.nodes.2": "rabbit@rabbit2",
        "cluster_formation.classic_config.nodes.3": "rabbit@rabbit3",
        "cluster_partition_handling": "pause_minority",
    }


def test_cluster_apps_are_the_apps_of_docker_compose_yml(compose, cluster_compose):
    """The same gateway and votes, but waiting for both clusters, on quorum
    queues, with every RabbitMQ node in AMQP_URI and one Redis node in
    REDIS_URI."""
    for name in APPS:
        single = copy.deepcopy(compose["services"][name])
        cluster = copy.deepcopy(cluster_compose["services"][name])
        assert cluster.pop("depends_on") == {
            "rabbit1": {"condition": "service_healthy"},
            "rabbit2": {"condition": "service_healthy"},
            "rabbit3": {"condition": "service_healthy"},
            CLUSTER_CREATE: {"condition": "service_completed_successfully"}}
        single.pop("depends_on")
        env = cluster["environment"]
        assert env.pop("AMQP_URI") == (
            "amqp://${RABBITMQ_USER:?set RABBITMQ_USER}:"
            "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD}@rabbit1:5672/;"
            "amqp://${RABBITMQ_USER}:${RABBITMQ_PASSWORD}@rabbit2:5672/;"
            "amqp://${RABBITMQ_USER}:${RABBITMQ_PASSWORD}@rabbit3:5672/")
        assert env.pop("AMQP_QUEUE_TYPE") == "quorum"
        assert env.pop("REDIS_URI") == (
            "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis-1:6379/0")
        for key in ("AMQP_URI", "REDIS_URI"):
            single["environment"].pop(key)
        assert cluster == single, name


def test_cluster_amqp_uri_gives_kombu_the_three_nodes(cluster_compose):
    uri = interpolate(env_of(cluster_compose["services"]["votes"])["AMQP_URI"],
                      {"RABBITMQ_USER": "votes", "RABBITMQ_PASSWORD": "s3cret"})
    assert kombu.Connection(uri).alt == [
        "amqp://votes:s3cret@{}:5672/".format(name) for name in RABBIT_NODES]


# compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
CLUSTER_SECRETS = ("RABBITMQ_ERLANG_COOKIE", "RABBITMQ_USER", "RABBITMQ_PASSWORD",
                   "REDIS_PASSWORD")


def interpolate(text, env):
    """``text`` as compose interpolates it with ``env``; KeyError for a
    required variable that is unset, as compose refuses to start."""
    def value(match):
        name, kind, rest = match.groups()
        if name in env:
            return env[name]
        if kind in (":?", "?"):
            raise KeyError("{}: {}".format(name, rest))
        return rest if kind in (":-", "-") else ""
    return INTERPOLATION.sub(value, text)


def test_cluster_compose_has_no_default_credential(tmp_path):
    """The production-like file: no guest login, no default for any
    secret, each required (compose fails fast, naming it, when unset),
    and every place that needs one is given it."""
    text = CLUSTER_COMPOSE_FILE.read_text()
    assert "guest" not in text
    uses = collections.defaultdict(set)
    for name, kind, _ in INTERPOLATION.findall(text):
        uses[name].add(kind)
    for name in CLUSTER_SECRETS:
        assert ":?" in uses[name], name
        assert not uses[name] & {":-", "-"}, name
    for name in CLUSTER_SECRETS:
        env = {other: "x" for other in CLUSTER_SECRETS if other != name}
        with pytest.raises(KeyError, match=name):
            interpolate(text, env)
    secrets = {name: "secret-of-" + name.lower() for name in CLUSTER_SECRETS}
    (tmp_path / "resolved.yml").write_text(interpolate(text, secrets))
    resolved = load_compose(tmp_path / "resolved.yml")
    services = resolved["services"]
    for name in RABBIT_NODES:
        env = env_of(services[name])
        assert env["RABBITMQ_ERLANG_COOKIE"] == secrets["RABBITMQ_ERLANG_COOKIE"]
        assert env["RABBITMQ_DEFAULT_PASS"] == secrets["RABBITMQ_PASSWORD"]
    for name in REDIS_NODES:
        options = dict(zip(*[iter(command_argv(services[name])[1:])] * 2, strict=True))
        assert options["--requirepass"] == options["--masterauth"] == (
            secrets["REDIS_PASSWORD"]), name
        assert env_of(services[name])["REDISCLI_AUTH"] == secrets["REDIS_PASSWORD"]
    assert env_of(services[CLUSTER_CREATE])["REDISCLI_AUTH"] == secrets["REDIS_PASSWORD"]
    for name in APPS:
        env = env_of(services[name])
        assert env["REDIS_URI"] == "redis://:{}@redis-1:6379/0".format(
            secrets["REDIS_PASSWORD"])
        assert all(node.startswith("amqp://secret-of-rabbitmq_user:"
                                   "secret-of-rabbitmq_password@")
                   for node in env["AMQP_URI"].split(";"))


def test_every_cluster_app_environment_variable_is_read_by_config_yml(cluster_compose):
    config_text = CONFIG_FILE.read_text()
    for name in APPS:
        unread = sorted(var for var in env_of(cluster_compose["services"][name])
                        if "${" + var not in config_text)
        assert unread == [], "{}: config.yml does not read {}".format(name, unread)


# --- the Dockerfile and .dockerignore --------------------------------------

def dockerfile_instructions():
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_bases_are_pinned_slim_python():
    froms = [args for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 2  # builder + runtime
    images = {args.split()[0] for args in froms}
    assert len(images) == 1, images
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", images.pop())


def test_dockerfile_runtime_stage():
    instructions = dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    runtime = instructions[last_from:]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert len(users) == 1
    user = users[0].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    assert ("WORKDIR", "/app") in runtime
    envs = " ".join(args for keyword, args in runtime if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in envs
    assert "PATH=/opt/venv/bin:$PATH" in envs
    copies = [args for keyword, args in runtime if keyword == "COPY"]
    assert copies == [
        "--from=builder /opt/venv /opt/venv",
        "services/ ./services/",
        "config.yml ./",
    ]
    assert "--backdoor" not in DOCKERFILE.read_text()


def test_image_installs_the_runtime_requirements_only():
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.lock" in runs
    assert "requirements-dev" not in DOCKERFILE.read_text()
    runtime = (ROOT / "requirements.txt").read_text()
    for tool in ("pytest", "schemathesis", "jsonschema", "ruff"):
        assert tool not in runtime


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = {line.strip() for line in lines
                if line.strip() and not line.startswith("#")}
    for pattern in (".git", ".venv", "**/__pycache__", "tests", "bench",
                    ".pytest_cache", ".env"):
        assert pattern in patterns, pattern
    for needed in ("services", "config.yml", "requirements.txt", "requirements.lock"):
        assert needed not in patterns


def lock_pins():
    """{name: version} of requirements.lock, each with at least one hash."""
    text = (ROOT / "requirements.lock").read_text()
    pins = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = entry.split()[0] if entry.strip() and not entry.startswith("#") else ""
        if "==" in head:
            name, version = head.split("==")
            assert "--hash=sha256:" in entry, head
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_lock_pins_every_direct_requirement_at_its_version():
    pins = lock_pins()
    direct = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)",
                        (ROOT / "requirements.txt").read_text(), re.M)
    assert direct
    for name, version in direct:
        assert pins.get(name.lower().replace("_", "-")) == version, name
    # the closure: nameko's own dependencies are in it too
    for transitive in ("pyyaml", "requests", "wrapt", "greenlet", "mock"):
        assert transitive in pins, transitive


def test_image_labels_carry_the_version():
    from services import __version__
    text = DOCKERFILE.read_text()
    assert "ARG VERSION={}".format(__version__) in text
    assert 'org.opencontainers.image.version="${VERSION}"' in text
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    openapi = json.loads((ROOT / "services" / "gateway" / "openapi.json").read_text())
    assert openapi["info"]["version"] == __version__
    assert "## [{}] - ".format(__version__) in (ROOT / "CHANGELOG.md").read_text()


# --- services.healthcheck ------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_healthcheck(*args, timeout=15):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "services.healthcheck", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


@pytest.fixture
def http_server(tmp_path):
    """`python -m http.server` serving a directory with a file `ready`."""
    (tmp_path / "ready").write_text("ok\n")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port),
         "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "http.server exited"
                assert time.monotonic() < deadline, "http.server did not start"
                time.sleep(0.05)
        yield "http://127.0.0.1:{}".format(port)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_healthcheck_exits_0_on_a_2xx(http_server):
    result, _ = run_healthcheck(http_server + "/ready")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "healthy: GET {}/ready answered 200\n".format(http_server)


def test_healthcheck_exits_1_on_a_non_2xx(http_server):
    result, _ = run_healthcheck(http_server + "/missing")
    assert result.returncode == 1
    assert result.stdout == "unhealthy: GET {}/missing answered 404\n".format(http_server)


def test_healthcheck_exits_1_on_a_closed_port():
    url = "http://127.0.0.1:{}/ready".format(free_port())
    result, _ = run_healthcheck(url)
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: GET {} failed: ".format(url))
    assert "refused" in result.stdout.lower()
    assert result.stdout.count("\n") == 1


def test_healthcheck_gives_up_after_3_seconds():
    # accepts connections (the kernel does, into the backlog) but never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = "http://127.0.0.1:{}/ready".format(listener.getsockname()[1])
        result, elapsed = run_healthcheck(url)
    assert result.returncode == 1
    assert result.stdout == "unhealthy: GET {} failed: timed out\n".format(url)
    assert 2.5 <= elapsed < 8


@pytest.mark.parametrize("args", [(), ("ftp://127.0.0.1/",), ("a", "b")])
def test_healthcheck_exits_1_on_bad_usage(args):
    result, _ = run_healthcheck(*args)
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1
