"""`make bench` still works: its quick mode, end to end. Figures are not
checked here (they belong to the bench, on a quiet machine); that every
vote answered 202 was counted, exactly, is."""
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = (
    "bare @http GET /vote, c=16", "single votes GET /vote, c=16",
    "single votes GET /vote, transient messages, c=64",
    "reads GET /vote-counts, c=64", "batch votes POST /votes x100",
    "drain of batches: one votes process", "202 -> visible in /vote-counts",
    "Redis memory per voter vote", "Redis memory per Idempotency-Key",
    "peak RSS, gateway", "202 -> counts event at a stream",
    "gateway RSS, 20 streams open", "counts_changed at 1,000 posts changed/s",
)


def test_quick_bench_runs_and_counts_exactly(tmp_path):
    out = tmp_path / "bench.txt"
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = bench.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # as Ctrl-C: the bench then removes its services, vhost and servers
        # (killed, it would leave them running)
        bench.send_signal(signal.SIGINT)
        stdout, stderr = bench.communicate(timeout=60)
        raise AssertionError("the quick bench took over 300 s:\n" + stdout[-4000:]
                             + stderr[-4000:]) from None
    assert bench.returncode == 0, stdout[-4000:] + stderr[-4000:]
    table = out.read_text()
    for row in ROWS:
        assert row in table
    (line,) = [line for line in table.splitlines() if line.startswith("correctness")]
    counted, answered = re.search(r"PASS\s+([\d,]+) == ([\d,]+)", line).groups()
    assert counted == answered and int(counted.replace(",", "")) > 1000
    # the targets table, in the throughput work's layout
    assert "targets: the median of 1 run each" in table
    assert "| lost or doubled | 0 | 0 | - | yes |" in table
    assert re.search(r"^- c64: transient/bare \d\.\d\d \(\d\.\d\d\); "
                     r"durable/transient \d\.\d\d \(\d\.\d\d\)$", table, re.M)
    assert re.search(r"^- c16: gateway x\d\.\d\d \(\d\.\d\d\); "
                     r"transient x\d\.\d\d \(\d\.\d\d\)$", table, re.M)
    assert "| votes-service CPU seconds per 100k applied votes | half of 1deb8e3's | n/a " \
        "| not measured (--quick) | **no** |" in table
