"""POST /v1/subscriptions against a bare FastAPI one-row insert, on PostgreSQL.

Both apps run under uvicorn (1 process) on this host, on a fresh database; wrk loads them in
alternating rounds (bare, subscribe, bare, ...) and the medians are compared. Every subscribe
request is a new contact (spread over 50 SKUs); any non-201 answer or socket error aborts.

    .venv/bin/python bench/subscribe.py --rounds 5 --duration 10 --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

import psycopg2
from benchlib import BENCH, PG, RESULTS, cpu_seconds, free_port, fresh_database, write_results

from backinstock.crypto import new_key_spec

OUT = BENCH / "out"  # server logs (git-ignored)
DATABASE = "backinstock_bench"
REDIS_URL = "redis://127.0.0.1:6379/13"
HIGH_RATE = "100000000/minute"  # the limiter runs (a Redis round trip) but never refuses
STRIDE = 1_000_000  # contact numbers reserved per wrk run
BACKINSTOCK = str(Path(sys.executable).parent / "backinstock")  # the venv's console script


@dataclass
class Target:
    name: str
    path: str
    key: str | None
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    rounds: list[dict[str, float]] = field(default_factory=list)


def count_rows(table: str) -> int:
    with psycopg2.connect(dbname=DATABASE, **PG) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def service_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKINSTOCK_")}
    env.update(
        BACKINSTOCK_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
        BACKINSTOCK_REDIS_URL=REDIS_URL,
        BACKINSTOCK_ENCRYPTION_KEYS=new_key_spec("b1"),
        BACKINSTOCK_BLIND_INDEX_KEY=new_key_spec("b1"),
        BACKINSTOCK_TOKEN_KEY=new_key_spec("b1"),
        BACKINSTOCK_ALLOWED_LINK_HOSTS="shop.example",
        BACKINSTOCK_RATE_LIMIT_PER_IP=HIGH_RATE,
        BACKINSTOCK_RATE_LIMIT_PER_CONTACT=HIGH_RATE,
        BACKINSTOCK_LOG_LEVEL="WARNING",
        BENCH_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
    )
    return env


def cli(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([BACKINSTOCK, *argv], env=env, cwd=OUT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"backinstock {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def start(name: str, path: str, key: str | None, cmd: list[str], env: dict[str, str]) -> Target:
    port = free_port()
    log = OUT / f"{name}.log"
    argv = [*cmd, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, cwd=OUT, stdout=sink, stderr=subprocess.STDOUT)
    target = Target(name, path, key, proc, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(target, "exited during startup")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return target
        except OSError:
            time.sleep(0.2)
    fail(target, "did not answer /healthz within 30 s")
    raise AssertionError  # unreachable


def fail(target: Target, why: str) -> None:
    if target.proc.poll() is None:
        target.proc.kill()
    tail = target.log.read_text(errors="replace")[-3000:]
    sys.exit(f"{target.name}: {why}\n--- {target.log} (tail) ---\n{tail}")


def wrk(target: Target, base: int, args: argparse.Namespace, seconds: int) -> dict[str, float]:
    cmd = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
        "-s", str(BENCH / "subscribe.lua"), f"http://127.0.0.1:{target.port}",
        "--", target.path, str(base), str(args.threads), *([target.key] if target.key else []),
    ]  # fmt: skip
    cpu = cpu_seconds(target.proc.pid)
    done = subprocess.run(cmd, capture_output=True, text=True)
    cpu = cpu_seconds(target.proc.pid) - cpu
    match = re.search(r"^BENCH_JSON (.*)$", done.stdout, re.M)
    if done.returncode != 0 or not match:
        sys.exit(f"wrk failed on {target.name}:\n{done.stdout}\n{done.stderr}")
    result: dict[str, float] = json.loads(match.group(1))
    result["cpu_ms"] = 1000 * cpu / max(result["requests"], 1)  # server CPU per request
    if result["non201"] or result["socket_errors"] or result["timeouts"]:
        fail(target, f"errors during the run: {result}")
    if result["requests"] >= STRIDE:
        sys.exit("more requests than contact numbers reserved per run; raise STRIDE")
    return result


def table(*targets: Target) -> list[str]:
    bare, sub = targets
    cols = {"rps": "{:.1f}", "p50_ms": "{:.1f}", "p99_ms": "{:.1f}", "cpu_ms": "{:.2f}"}

    def cells(b: dict[str, float], s: dict[str, float], bold: str = "") -> str:
        return " | ".join(bold + f.format(r[k]) + bold for r in (b, s) for k, f in cols.items())

    lines = [
        "| round | bare req/s | p50 ms | p99 ms | CPU ms/req "
        "| subscribe req/s | p50 ms | p99 ms | CPU ms/req | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (b, s) in enumerate(zip(bare.rounds, sub.rounds, strict=True), start=1):
        lines.append(f"| {i} | {cells(b, s)} | {s['rps'] / b['rps']:.2f} |")
    med_b, med_s = ({k: statistics.median(r[k] for r in t.rounds) for k in cols} for t in targets)
    ratio = med_s["rps"] / med_b["rps"]
    lines.append(f"| median | {cells(med_b, med_s, '**')} | **{ratio:.2f}** |")
    verdict = "met" if ratio >= 0.9 else "NOT met"
    lines += ["", f"**subscribe / bare = {ratio:.2f}x** (median req/s; target >= 0.90x: {verdict})"]
    return lines


def section(args: argparse.Namespace, pg: dict[str, str], lines: list[str], rows: str) -> str:
    now = datetime.now(UTC)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    return "\n".join([
        f"## {now:%Y-%m-%d} — subscribe vs bare insert (PostgreSQL)", "",
        f"- command: `{shlex.join(['.venv/bin/python', 'bench/subscribe.py', *sys.argv[1:]])}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc={os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"- PostgreSQL {pg['server_version']} (synchronous_commit={pg['synchronous_commit']}, "
        f"fsync={pg['fsync']}, shared_buffers={pg['shared_buffers']}); Redis limiter on "
        f"{REDIS_URL}",
        f"- servers: uvicorn, 1 process each, loop/http auto ({loop}/{http}), access log "
        "off; pool_size=10, max_overflow=10, pool_pre_ping=True; fresh database per run",
        f"- subscribe: BACKINSTOCK_LOG_LEVEL=WARNING, rate limits {HIGH_RATE} per IP and per "
        "contact (checked in Redis, never refusing); every request a new contact, 50 SKUs",
        f"- load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(bench/subscribe.lua), {args.warmup} s warm-up per server, {args.rounds} alternating "
        "rounds bare/subscribe; same body for both (bare parses sku and contact)",
        "- CPU ms/req: user+system CPU of the server process during the run / requests",
        f"- {rows}", "", *lines, "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=5, help="seconds, once per server")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    OUT.mkdir(exist_ok=True)
    pg = fresh_database(DATABASE)
    env = service_env()
    cli(env, "migrate")
    key = cli(env, "keys", "create", "--name", "bench", "--scope", "subscribe").split()[-1]
    bare = [sys.executable, str(BENCH / "bare_app.py")]
    targets: list[Target] = []
    try:
        targets.append(start("bare", "/bare", None, bare, env))
        targets.append(start("subscribe", "/v1/subscriptions", key, [BACKINSTOCK, "serve"], env))
        runs = 0
        for target in targets:
            wrk(target, runs * STRIDE, args, args.warmup)
            runs += 1
        for r in range(args.rounds):
            for target in targets:
                target.rounds.append(wrk(target, runs * STRIDE, args, args.duration))
                runs += 1
                t = target.rounds[-1]
                figures = f"{t['rps']:.1f} req/s  p50 {t['p50_ms']:.1f}  p99 {t['p99_ms']:.1f} ms"
                figures += f"  CPU {t['cpu_ms']:.2f} ms/req"
                print(f"round {r + 1} {target.name:>9}: {figures}", flush=True)
    finally:
        for target in targets:
            target.proc.terminate()
            target.proc.wait(timeout=15)
    rows = ", ".join(f"{t}={count_rows(t)}" for t in ("bare_rows", "subscriptions"))
    rows = f"rows after the run: {rows}"
    lines = table(*targets)
    print("\n" + "\n".join(lines) + f"\n{rows}")
    if args.write:
        write_results(section(args, pg, lines, rows))
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
