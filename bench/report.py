"""docs/performance.md: the last full ``make bench`` run, written by the
bench itself, so that no figure in the docs is edited by hand."""
import os

from harness.process import ROOT

DOCS_PAGE = os.path.join(ROOT, "docs", "performance.md")

HEADER = """\
# Performance

Written by `make bench` (`bench/report.py`) at the end of its last full
run; do not edit by hand. The run below is dated and names the machine,
the software and the commit it measured.

What each phase does and how each figure is measured: `bench/README.md`.
Every process (RabbitMQ, Redis, wrk, the services, a bare nameko `@http`
service that returns a constant as the yardstick) shares the machine's
cores, and the machines under this project change speed between days and
within one. So compare ratios measured in one run (`votes/bare`,
`reads/bare`, `x` of a baseline commit), not figures across runs. The
table of targets at the end takes the median of the rounds of each figure.
After it, in a run that had the `capacity` phase, the capacity tables: CPU
seconds per 100k votes of each component, the cores and memory each needs
at 10k, 100k and 1M votes/s (from this machine's costs: scale them to
yours), where a single queue or a single Redis stops scaling, and the
model checked against two processes of a kind.

To measure your own machine: `make bench` (about 15 minutes; it starts its
own services, vhost and redis-servers, and removes them at the end). It
rewrites this page; `--only PHASE` and `--quick` runs do not.

"""


def page(text):
    """The page for one run's table (``run.render``'s text)."""
    return HEADER + "```\n" + text.rstrip("\n") + "\n```\n"


def write(text, path=DOCS_PAGE):
    with open(path, "w") as handle:
        handle.write(page(text))
