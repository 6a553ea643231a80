"""The committed gRPC stubs are what ``make proto`` generates from ``threads.proto``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc

from challenges.rpc import threads_pb2, threads_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["threads_pb2.py", "threads_pb2.pyi", "threads_pb2_grpc.py", "threads_pb2_grpc.pyi"]


def test_committed_stubs_are_up_to_date(tmp_path: Path) -> None:
    # The same arguments as the Makefile's `proto` target, into a temporary root.
    bindir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", ".",
            f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}", f"--mypy_out={tmp_path}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}", f"--mypy_grpc_out={tmp_path}",
            "challenges/rpc/threads.proto",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (tmp_path / "challenges" / "rpc" / name).read_text()
        committed = (ROOT / "challenges" / "rpc" / name).read_text()
        assert fresh == committed, f"challenges/rpc/{name} is stale: run `make proto` and commit"


def test_the_stubs_import_as_a_package_and_grpc_is_not_shadowed() -> None:
    assert threads_pb2_grpc.challenges_dot_rpc_dot_threads__pb2 is threads_pb2
    assert "site-packages" in str(grpc.__file__)
    assert not any((Path(p) / "grpc").is_dir() for p in sys.path if p and Path(p).resolve() == ROOT)


def test_the_messages_encode_as_protocol_section_5() -> None:
    pub = b"bbaareigxlkmadavrbk35ks762pewibz2b3qxf462uyrsllycdjupob2rdi"
    assert threads_pb2.GetTokenRequest(key=pub.decode()).SerializeToString() == b"\x0a\x3b" + pub
    assert threads_pb2.GetTokenRequest(signature=bytes(64)).SerializeToString() == b"\x12\x40" + bytes(64)
    challenge = bytes(range(32))
    reply = threads_pb2.GetTokenReply.FromString(b"\x0a\x20" + challenge)
    assert reply.WhichOneof("payload") == "challenge"
    assert reply.challenge == challenge
    assert threads_pb2.DESCRIPTOR.services_by_name["API"].full_name == "threads.pb.API"
