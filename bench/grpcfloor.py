"""What gRPC alone costs a relayed flow: the relay's floor.

A bare ``grpc.aio`` server and a bare ``grpc.aio`` client exchange the Hub's
``GetToken`` messages (the key, a 32-byte challenge, the signature, a token)
on one bidirectional stream per call, the way the provider and
``runauthority`` do (on uvloop, as they run), with no flow work at all: no WebSocket, no signature
check, no audit. The client is pinned to the server CPUs, as the provider is;
the server to the same CPUs (as ``relay`` runs ``runauthority``) or to the
load generator's (as ``remote`` does). Their CPU per call is what gRPC itself
takes out of the relay's budget. ``python -m bench.grpcfloor server PORT_FILE`` and
``python -m bench.grpcfloor client PORT CONCURRENCY CALLS CPUS`` (CPUS a JSON list,
empty for no pinning) are the two sides.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import uvloop

from challenges.rpc import GET_TOKEN_METHODS
from challenges.rpc.threads_pb2 import GetTokenReply, GetTokenRequest

from . import procs, servers

#: A token of the size the embedded authority mints (a JWT of about 400 bytes).
_TOKEN = "t" * 400


@dataclass
class GrpcCost:
    """One run of the bare exchange: calls per second, and CPU ms per call on each side."""

    concurrency: int
    rate: float
    client_ms: float
    server_ms: float

    @property
    def total_ms(self) -> float:
        return self.client_ms + self.server_ms


def measure(
    tmp: Path,
    *,
    concurrency: list[int],
    repeats: int,
    calls: int,
    cpus: set[int] | None,
    server_cpus: set[int] | None = None,
) -> list[GrpcCost]:
    """``repeats`` runs of ``calls`` calls at each concurrency: the client pinned to ``cpus``,
    the server to ``server_cpus`` (default: the same CPUs, as ``relay`` runs; apart, as
    ``remote`` runs, each side wakes for every message the other sends, and pays more per
    call)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port_file = tmp / "grpc-floor.port"
    process, log_path = servers.launch(
        [sys.executable, "-m", "bench.grpcfloor", "server", str(port_file)],
        env=dict(os.environ),
        log_path=tmp / "grpc-floor.log",
    )
    server = servers.Server(process=process, port=0, env={}, log_path=log_path)  # its port: below

    def listening() -> int | None:
        text = port_file.read_text() if port_file.exists() else ""
        return int(text) if text.strip() else None

    try:
        port = servers.wait_ready(process, log_path, listening, timeout=20, what="the gRPC floor")
        procs.pin(process.pid, server_cpus or cpus)
        results = []
        for repeat in range(repeats + 1):  # the first is a warm-up
            for c in concurrency:
                before = procs.cpu_seconds(process.pid)
                out = subprocess.run(
                    [sys.executable, "-m", "bench.grpcfloor", "client", str(port), str(c),
                     str(calls if repeat else 100), json.dumps(sorted(cpus or []))],
                    cwd=servers.ROOT, capture_output=True, text=True, timeout=300, check=False,
                )  # fmt: skip
                served = procs.cpu_seconds(process.pid) - before
                if out.returncode != 0:
                    raise RuntimeError(
                        f"the gRPC floor's client failed ({out.returncode}):\n{out.stderr[-3000:]}"
                    )
                seen = json.loads(out.stdout)
                if repeat:
                    results.append(GrpcCost(c, seen["rate"], seen["cpu_ms"], served * 1000 / seen["calls"]))
        return results
    finally:
        server.stop()


def median_by_concurrency(costs: list[GrpcCost]) -> dict[int, GrpcCost]:
    """The median of each side's CPU per call (and of the rate) at each concurrency."""
    found = {}
    for c in dict.fromkeys(cost.concurrency for cost in costs):
        runs = [cost for cost in costs if cost.concurrency == c]
        found[c] = GrpcCost(
            c,
            statistics.median(r.rate for r in runs),
            statistics.median(r.client_ms for r in runs),
            statistics.median(r.server_ms for r in runs),
        )
    return found


async def _serve(port_file: Path) -> None:
    async def get_token(requests: object, context: grpc.aio.ServicerContext) -> None:
        await context.read()
        await context.write(GetTokenReply(challenge=b"c" * 32))
        await context.read()
        await context.write(GetTokenReply(token=_TOKEN))

    handler = grpc.stream_stream_rpc_method_handler(
        get_token,
        request_deserializer=GetTokenRequest.FromString,
        response_serializer=GetTokenReply.SerializeToString,
    )
    service, method = GET_TOKEN_METHODS[0].strip("/").split("/")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.with_suffix(".tmp").write_text(str(port))
    port_file.with_suffix(".tmp").replace(port_file)  # whole, or not there yet
    await server.wait_for_termination()


async def _drive(port: int, concurrency: int, calls: int) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    get_token = channel.stream_stream(
        GET_TOKEN_METHODS[0],
        request_serializer=GetTokenRequest.SerializeToString,
        response_deserializer=GetTokenReply.FromString,
    )

    async def one() -> None:
        call = get_token(metadata=[("x-textile-api-key", "bench")], timeout=30)
        await call.write(GetTokenRequest(key="k" * 59))
        if (await call.read()).WhichOneof("payload") != "challenge":
            raise RuntimeError("no challenge")
        await call.write(GetTokenRequest(signature=b"s" * 64))
        await call.done_writing()
        if (await call.read()).WhichOneof("payload") != "token":
            raise RuntimeError("no token")
        if await call.code() != grpc.StatusCode.OK:
            raise RuntimeError("not OK")

    async def client(n: int) -> None:
        for _ in range(n):
            await one()

    share, rest = divmod(calls, concurrency)
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(share + (i < rest)) for i in range(concurrency)))
    elapsed, used = time.perf_counter() - started, time.process_time() - cpu
    await channel.close()
    return {"calls": calls, "rate": calls / elapsed, "cpu_ms": used * 1000 / calls}


def main(argv: list[str]) -> None:
    # uvloop on both sides, as the relay's provider (under uvicorn) and runauthority run.
    if argv[:1] == ["server"]:
        uvloop.run(_serve(Path(argv[1])))
    elif argv[:1] == ["client"]:
        port, concurrency, calls, cpus = int(argv[1]), int(argv[2]), int(argv[3]), json.loads(argv[4])
        procs.pin(os.getpid(), set(cpus))  # before grpc starts its threads: they inherit it
        print(json.dumps(uvloop.run(_drive(port, concurrency, calls))))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
