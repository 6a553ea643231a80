"""The tests' real processes: the benchmark's harness (``bench/servers.py``), shared."""

from bench.servers import *  # noqa: F403
from bench.servers import ROOT, Redis, Server, drop_server_databases  # noqa: F401
