"""Measure content-addressed store put/get throughput per driver against a plain file copy.

Usage: python -m bench.cas [--size-mib 64] [--rounds 3] [--max-seconds 120]

Every put stores a new digest (each round's source file differs in its first bytes), read
from a source file in 1 MiB chunks. Every get is a whole, verified read. The baseline is
``shutil.copyfile`` of the same source file on the same disk. The S3 driver talks to a
moto server that this script starts on 127.0.0.1 and stops at the end. MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3

from shared.cas.stores import (
    ArtifactStore,
    FileArtifactStore,
    S3ArtifactStore,
    SqliteArtifactStore,
    put_object,
)

MIB = 1024 * 1024
CHUNK_BYTES = MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64, help="object size in MiB")
    parser.add_argument("--rounds", type=int, default=3, help="puts and gets per driver")
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="stop starting rounds after this"
    )
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (a temp dir)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="foxctl-bench-cas-", dir=args.dir))
    deadline = time.monotonic() + args.max_seconds
    try:
        sources = _make_sources(scratch / "sources", args.size_mib * MIB, args.rounds)
        rows = [_measure_copy(scratch, sources, deadline)]
        with _moto_server() as endpoint:
            for name, store in _stores(scratch, endpoint):
                rows.append(_measure_store(name, store, sources, deadline))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _print_table(rows, args.size_mib)


def _make_sources(directory: Path, size_bytes: int, rounds: int) -> list[Path]:
    directory.mkdir(parents=True)
    block = hashlib.sha256(b"foxctl-bench").digest() * (MIB // 32)
    paths = []
    for number in range(rounds):
        path = directory / f"source-{number}.bin"
        with path.open("wb") as output:
            output.write(number.to_bytes(8, "big"))
            written = 8
            while written < size_bytes:
                piece = block[: size_bytes - written]
                output.write(piece)
                written += len(piece)
        paths.append(path)
    return paths


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            yield chunk


def _timed(operation: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Return the seconds ``operation(*args)`` took, and its result."""
    started = time.perf_counter()
    result = operation(*args)
    return time.perf_counter() - started, result


def _measure_copy(scratch: Path, sources: list[Path], deadline: float) -> dict[str, Any]:
    copies = scratch / "copies"
    copies.mkdir()
    put_s, get_s = [], []
    for source in sources:
        if time.monotonic() > deadline:
            break
        target = copies / source.name
        put_s.append(_timed(shutil.copyfile, source, target)[0])
        get_s.append(_timed(_drain, _read_chunks(target))[0])
    return _row("file copy (baseline)", sources[0].stat().st_size, put_s, get_s)


def _measure_store(
    name: str, store: ArtifactStore, sources: list[Path], deadline: float
) -> dict[str, Any]:
    put_s, get_s = [], []
    for source in sources:
        if time.monotonic() > deadline:
            break
        seconds, result = _timed(put_object, store, _read_chunks(source))
        put_s.append(seconds)
        get_s.append(_timed(_read_whole, store, result.digest)[0])
    return _row(name, sources[0].stat().st_size, put_s, get_s)


def _read_whole(store: ArtifactStore, digest: str) -> None:
    _drain(store.read(digest))


def _drain(chunks: Iterator[bytes]) -> None:
    for _ in chunks:
        pass


def _row(name: str, size_bytes: int, put_s: list[float], get_s: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "rounds": len(put_s),
        "put_mb_s": size_bytes / statistics.median(put_s) / 1e6 if put_s else 0.0,
        "get_mb_s": size_bytes / statistics.median(get_s) / 1e6 if get_s else 0.0,
    }


def _stores(scratch: Path, endpoint: str) -> Iterator[tuple[str, ArtifactStore]]:
    yield "file", FileArtifactStore(scratch / "cas")
    yield "sqlite", SqliteArtifactStore(scratch / "cas.db")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    client.create_bucket(Bucket="foxctl-bench")
    yield "s3 (moto on loopback)", S3ArtifactStore(client, "foxctl-bench", spool_dir=scratch)


class _moto_server:
    """Run ``moto_server`` from this virtualenv on a free loopback port."""

    def __enter__(self) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        binary = Path(sys.executable).with_name("moto_server")
        self._process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(port, self._process)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self._process.terminate()
        self._process.wait(10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port} within 30 s")


def _print_table(rows: list[dict[str, Any]], size_mib: int) -> None:
    baseline = rows[0]
    print(f"object size {size_mib} MiB; median of the rounds; MB = 10^6 bytes")
    print("| driver | rounds | put MB/s | get MB/s | put vs copy | get vs copy |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        put_ratio = row["put_mb_s"] / baseline["put_mb_s"]
        get_ratio = row["get_mb_s"] / baseline["get_mb_s"]
        print(
            f"| {row['name']} | {row['rounds']} | {row['put_mb_s']:.0f} | {row['get_mb_s']:.0f} "
            f"| {put_ratio:.2f} | {get_ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
