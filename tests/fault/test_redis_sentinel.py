"""The services on Redis Sentinel (harness/redis_sentinel.py: a master,
two replicas, three sentinels, private ports), REDIS_URI in its
redis+sentinel form: the master killed mid-load and never started again.

Votes go in as POST /votes batches from concurrent clients; every vote
answered 202 must be counted exactly once, those accepted before the kill
within 60 s of it. Only this test's servers, vhost and processes are
touched."""
import time

import pytest
import requests

from harness.redis_sentinel import RedisSentinelServers
from tests.fault.harness import wait_until
from tests.fault.test_redis_cluster import (
    BatchLoad,
    check,
    counted_within,
    services_on,
)


@pytest.fixture
def sentinel_servers(tmp_path):
    servers = RedisSentinelServers(tmp_path)
    try:
        servers.start()
    except BaseException:
        servers.stop()
        raise
    yield servers
    servers.stop()


@pytest.fixture
def services(request, tmp_path, rabbit_config, sentinel_servers):
    yield from services_on(request, tmp_path, rabbit_config, sentinel_servers)


def test_the_master_killed_mid_load_fails_over_and_counts_exactly(
        services, sentinel_servers):
    total = 20_000
    old = sentinel_servers.master_port()
    with BatchLoad(services.base_url, total) as load:
        load.wait_sent(total // 4)
        before = load.accepted()
        killed = time.monotonic()
        sentinel_servers.kill(old)
        new = sentinel_servers.wait_failover(old)
        took = time.monotonic() - killed
        counted_within(services, before, killed + 60,
                       "the votes accepted before the kill counted")
        print("\n[sentinel] master :{} killed after {} votes accepted; :{} "
              "promoted {:.1f} s later; those votes counted {:.1f} s after the "
              "kill".format(old, len(before), new, took, time.monotonic() - killed))
        load.wait_sent(total)
    assert new != old and new in sentinel_servers.ports  # a replica promoted
    check(services, load, "sentinel")
    assert services.votes.alive
    # writes met the failover, and were retried, none dead-lettered
    samples = services.metrics(services.votes)
    errors = {labels[0][1]: value for (name, labels), value in samples.items()
              if name == "votes_store_errors_total"}
    print("[sentinel] store errors met {}".format(errors))
    assert sum(errors.values()) > 0 and errors.get("OTHER", 0) == 0
    assert samples.get(("votes_dead_lettered_total", ()), 0) == 0
    # the other replica follows the new master, and writes wait for it
    sentinel_servers.wait_replicated(new, 1)
    wait_until(lambda: ready_checks(services)["durability"] == "replicated", 10,
               "/ready to report durability replicated")


def ready_checks(services):
    response = requests.get(services.base_url + "/ready", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["checks"]
