"""The baseline: a bare nameko ``@http`` service that returns a constant.

It has the gateway's three routes so that wrk sends it byte-for-byte the
same requests; the ratio gateway/bare is what the gateway's own work costs.
Run with ``nameko run --config config.yml bench.bare``.
"""
from nameko.web.handlers import http

BODY = '{"success":true}'


class BareService:

    name = "bench_bare"

    @http("GET,POST", "/vote")
    def vote(self, request):
        return 202, BODY

    @http("POST", "/votes")
    def votes(self, request):
        return 202, BODY

    @http("GET", "/vote-counts")
    def vote_counts(self, request):
        return 200, BODY
