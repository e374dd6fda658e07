"""Make sure RabbitMQ and Redis answer at the addresses config.yml names.

A server that does not answer on this machine is started when its program
is installed; otherwise this says how to get one, and exits 1.
"""
import os
import shutil
import subprocess
import sys
import time
from urllib.parse import urlsplit

import redis
import yaml
from kombu import Connection
from nameko.cli.main import setup_yaml_parser

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where the Redis started here keeps its append-only file, across restarts
REDIS_DATA = os.path.join(ROOT, ".data", "redis")
START_TIMEOUT = 60


def load_config(path="config.yml"):
    setup_yaml_parser()
    with open(path) as handle:
        return yaml.safe_load(handle)


def rabbitmq_answers(uri):
    try:
        with Connection(uri, connect_timeout=2) as connection:
            connection.connect()
        return True
    except Exception:
        return False


def redis_answers(uri):
    try:
        return redis.Redis.from_url(uri, socket_connect_timeout=2).ping()
    except Exception:
        return False


def start_rabbitmq(parts):
    if not shutil.which("rabbitmq-server"):
        return False
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    return True


def redis_command(port, data_dir=REDIS_DATA):
    """A daemonized redis-server that keeps every write in an append-only
    file under ``data_dir`` (fsync once a second, as docker-compose.yml's),
    so that counts survive its restart."""
    return [
        "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1",
        "--port", str(port), "--dir", data_dir, "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec",
        "--logfile", os.path.join(data_dir, "redis.log"),
    ]


def start_redis(parts, data_dir=REDIS_DATA):
    if not shutil.which("redis-server"):
        return False
    os.makedirs(data_dir, exist_ok=True)
    subprocess.run(redis_command(parts.port or 6379, data_dir), check=False,
                   stdout=subprocess.DEVNULL)
    return True


def ensure(name, uri, answers, start, package):
    if answers(uri):
        print("{} answers at {}".format(name, urlsplit(uri).netloc.split("@")[-1]))
        return True
    parts = urlsplit(uri)
    if parts.hostname in LOCAL_HOSTS and start(parts):
        print("{} did not answer: started a local one".format(name))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if answers(uri):
                print("{} answers".format(name))
                return True
            time.sleep(1)
    print(
        "{name} does not answer at {where}.\n"
        "  Install it (Debian/Ubuntu: sudo apt-get install {package}),\n"
        "  or start the project's own: "
        "docker compose -f docker-compose.yml -f docker-compose.dev.yml "
        "up -d rabbitmq redis\n"
        "  or point {var} at a running server.".format(
            name=name, where=parts.netloc.split("@")[-1], package=package,
            var="AMQP_URI" if name == "RabbitMQ" else "REDIS_URI"),
        file=sys.stderr,
    )
    return False


def main():
    config = load_config()
    ok = ensure("RabbitMQ", config["AMQP_URI"], rabbitmq_answers,
                start_rabbitmq, "rabbitmq-server")
    ok = ensure("Redis", config["REDIS_URIS"]["votes"], redis_answers,
                start_redis, "redis-server") and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
