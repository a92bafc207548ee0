"""`charlm serve` under load: 1, 8, 32 and 64 concurrent streaming clients on 127.0.0.1.

The server runs as its own process (`charlm serve RUN --threads 1`); the clients run here, each a
loop of streamed completions on fresh connections (plain asyncio sockets, so the client's own
cost stays small) for a fixed time. For each level: aggregate characters per second received,
p50/p99 time to the first character and to the end of a completion, completions finished and
errors (any status but 200, or a stream without `data: [DONE]`). A request still open when the
time is up is closed; its characters count, its latency does not. The table ends with the
speed-up over one client, and the server's largest batch (/health).

Without RUN, the 2x256 LSTM of configs/default.yaml is trained for 2 steps on CORPUS in a
temporary folder (speed does not depend on training).

    python bench/bench_serve.py [RUN] [--clients 1,8,32,64] [--seconds 10] [--max-tokens 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common import DEFAULT_CORPUS, ROOT, train_in_child

HOST = "127.0.0.1"


@dataclass
class Level:
    """What one level's clients saw."""

    chars: int = 0
    first: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0


async def completion(port: int, body: bytes, level: Level, start: float, end: float) -> None:
    """One streamed completion; the characters, latencies and errors go into `level`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        writer.write(head.encode() + body)
        status = (await reader.readline()).split()[1]
        await reader.readuntil(b"\r\n\r\n")
        if status != b"200":
            level.errors += 1
            return
        buffer, done, got_first = b"", False, False
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)  # chunked encoding
            if size == 0:
                break
            buffer += (await reader.readexactly(size + 2))[:-2]
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    done = True
                    continue
                text = json.loads(data)["choices"][0]["text"]
                if time.perf_counter() <= end:
                    level.chars += len(text)
                if text and not got_first:
                    level.first.append(time.perf_counter() - start)
                    got_first = True
        if done:
            level.total.append(time.perf_counter() - start)
        else:
            level.errors += 1
    finally:
        writer.close()


async def client(port: int, i: int, args: argparse.Namespace, level: Level, end: float) -> None:
    k = 0
    while time.perf_counter() < end:
        body = {"prompt": "ROMEO:", "max_tokens": args.max_tokens, "seed": i * 100_000 + k,
                "temperature": 0.8, "stream": True}  # fmt: skip
        k += 1
        start = time.perf_counter()
        try:
            await asyncio.wait_for(
                completion(port, json.dumps(body).encode(), level, start, end), end - start
            )
        except TimeoutError:
            return  # the time is up: an open request is closed, not counted
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            level.errors += 1


async def run_level(port: int, clients: int, args: argparse.Namespace) -> tuple[Level, float]:
    level = Level()
    start = time.perf_counter()
    end = start + args.seconds
    await asyncio.gather(*[client(port, i, args, level, end) for i in range(clients)])
    return level, time.perf_counter() - start


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:,.0f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def start_server(
    run: Path, port: int, max_batch: int, args: argparse.Namespace
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "charlm", "serve", str(run), "--port", str(port),
           "--threads", str(args.threads), "--precision", args.precision,
           "--max-batch", str(max_batch)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if get_json(f"http://{HOST}:{port}/health")["status"] == "ok":
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("charlm serve did not start within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, help="a run folder; default: trains one")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--precision", default="fp32", help="the server's --precision")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            corpus = [f"data.corpus={args.corpus}"] if args.corpus.exists() else []  # else built-in
            train_in_child(["configs/default.yaml", *corpus, "train.max_steps=2",
                            "train.device=cpu"], run, "training")  # fmt: skip
        port = free_port()
        proc = start_server(run, port, max(levels), args)
        try:
            report(port, levels, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def report(port: int, levels: list[int], args: argparse.Namespace) -> None:
    print(f"{args.seconds:g} s per level, max_tokens {args.max_tokens}, temperature 0.8, "
          f"server --threads {args.threads} --precision {args.precision}")  # fmt: skip
    print("| clients | chars/s | x one | TTFC p50 ms | TTFC p99 ms | done p50 ms | done p99 ms "
          "| completions | errors |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    single = None
    for clients in levels:
        level, took = asyncio.run(run_level(port, clients, args))
        rate = level.chars / min(took, args.seconds)
        single = single or rate
        print(f"| {clients} | {rate:,.0f} | {rate / single:.1f} | {pct(level.first, 0.5)} | "
              f"{pct(level.first, 0.99)} | {pct(level.total, 0.5)} | {pct(level.total, 0.99)} | "
              f"{len(level.total)} | {level.errors} |", flush=True)  # fmt: skip
    stats = get_json(f"http://{HOST}:{port}/health")
    print(
        f"server: largest batch {stats['largest_batch']}, {stats['steps']:,} steps, "
        f"{stats['characters']:,} characters"
    )
    print(f"characters per step: {stats['characters'] / max(1, stats['steps']):.1f}")


if __name__ == "__main__":
    main()
