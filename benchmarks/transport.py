"""Transport benchmark: the durable, authenticated path against raw ZeroMQ.

durable path: robot process -> encode chunk -> spool (fsync) -> sender (DEALER, CURVE) ->
              ingest process (ROUTER, CURVE, validate, dedupe) -> Parquet store (fsync) -> ack
raw baseline: robot process -> PUSH the same encoded chunk bytes -> PULL process (no disk,
              no encryption, no acks)

Both run in this script, one after the other, with 1 and 8 robot processes streaming 128x128
RGB steps in chunks. Frames are made before the clock starts; the clock runs from a common
start signal until the last chunk is acknowledged (durable) or received (raw).

    python benchmarks/transport.py [--steps 6400] [--chunk-steps 16] [--robots 1,8]

Prints a table, writes benchmarks/out/transport.png and ends with ``ratio_vs_raw=<x>``: the
smaller of the durable/raw steps-per-second ratios over the robot counts measured.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import zmq

from vlac.shared.net import free_port

OUT = Path(__file__).parent / "out"


def _make_steps(robot: int, steps: int, chunk: int):
    from vlac.shared.episode import synthetic_steps
    from vlac.shared.wire import DEFAULT_SPEC

    return [synthetic_steps(DEFAULT_SPEC, chunk, start_step=s, seed=robot)
            for s in range(0, steps, chunk)]


def _encoded_chunks(robot_id: str, parts) -> list[bytes]:
    from vlac.shared import wire
    from vlac.shared.episode import make_chunk

    out = []
    for i, p in enumerate(parts):
        final = wire.Outcome(success=True, n_chunks=len(parts), n_steps=len(parts) * len(p)) \
            if i == len(parts) - 1 else None
        out.append(wire.encode(make_chunk(robot_id, "bench-ep", i, "push the puck", p, final,
                                          first_step=i * len(p))))
    return out


# ----------------------------------------------------------------------------- raw
def _raw_robot(address: str, robot: int, steps: int, chunk: int, start, ready) -> None:
    msgs = _encoded_chunks(f"robot-{robot}", _make_steps(robot, steps, chunk))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.connect(address)
    ready.release()
    start.wait()
    for m in msgs:
        sock.send(m, copy=False)
    sock.close(linger=-1)  # block until everything left
    ctx.term()


def _raw_sink(address: str, total_msgs: int, result) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 64)
    sock.bind(address)
    got = nbytes = 0
    while got < total_msgs:
        m = sock.recv(copy=False)
        nbytes += len(m)
        got += 1
    result.put((time.perf_counter(), nbytes))
    sock.close()
    ctx.term()


def run_raw(n_robots: int, steps: int, chunk: int) -> dict:
    ctx = mp.get_context("spawn")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    start, ready, result = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    n_msgs = n_robots * (steps // chunk)
    sink = ctx.Process(target=_raw_sink, args=(address, n_msgs, result))
    sink.start()
    robots = [ctx.Process(target=_raw_robot, args=(address, r, steps, chunk, start, ready))
              for r in range(n_robots)]
    for p in robots:
        p.start()
    for _ in robots:
        ready.acquire()
    t0 = time.perf_counter()
    start.set()
    t1, nbytes = result.get(timeout=600)
    for p in [*robots, sink]:
        p.join(30)
    dt = t1 - t0
    return {"path": "raw PUSH/PULL", "robots": n_robots, "steps": n_robots * steps,
            "seconds": dt, "steps_per_s": n_robots * steps / dt, "mb_per_s": nbytes / dt / 1e6}


# ----------------------------------------------------------------------------- durable
def _durable_robot(sender_cfg, robot: int, steps: int, chunk: int, start, ready,
                   result) -> None:
    from vlac.edge.transport.recorder import EpisodeRecorder
    from vlac.edge.transport.sender import Sender
    from vlac.shared.wire import DEFAULT_SPEC

    parts = _make_steps(robot, steps, chunk)
    spool = sender_cfg.make_spool()
    with Sender(sender_cfg, spool, DEFAULT_SPEC) as sender:
        while not sender.connected:  # connect and handshake before the clock starts
            time.sleep(0.01)
        ready.release()
        start.wait()
        rec = EpisodeRecorder(spool, sender_cfg.robot_id, "push the puck", chunk_steps=chunk)
        for p in parts:
            rec.add(p)
        rec.end(success=True)
        ok = sender.wait_drained(600)
        result.put((time.perf_counter(), ok, spool.nbytes))


def _ingest(cfg, ready_q) -> None:
    from vlac.cloud.ingest.service import Ingest

    ingest = Ingest(cfg)
    import threading

    def report():
        ready_q.put(ingest.wait_ready())

    threading.Thread(target=report, daemon=True).start()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: ingest.stop())
    ingest.serve()


def run_durable(n_robots: int, steps: int, chunk: int, workdir: Path) -> dict:
    from vlac.cloud.ingest.service import IngestConfig
    from vlac.edge.transport.sender import SenderConfig
    from vlac.shared import keys

    work = Path(tempfile.mkdtemp(dir=workdir))
    names = [f"robot-{r}" for r in range(n_robots)]
    keys.generate(work / "keys", names)
    icfg = IngestConfig(bind="tcp://127.0.0.1:0", store_root=work / "store",
                        server_secret_key=work / "keys/server/ingest.key_secret",
                        allowed_keys_dir=work / "keys/robots", status_every_s=0)
    ctx = mp.get_context("spawn")
    addr_q = ctx.Queue()
    ingest = ctx.Process(target=_ingest, args=(icfg, addr_q))
    ingest.start()
    address = addr_q.get(timeout=60)
    start, ready, result = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    robots = []
    for r, name in enumerate(names):
        scfg = SenderConfig(robot_id=name, ingest_address=address,
                            robot_secret_key=work / f"keys/robots/{name}.key_secret",
                            server_public_key=work / "keys/server/ingest.key",
                            spool_dir=work / "spool" / name)
        p = ctx.Process(target=_durable_robot, args=(scfg, r, steps, chunk, start, ready,
                                                     result))
        p.start()
        robots.append(p)
    for _ in robots:
        ready.acquire()
    t0 = time.perf_counter()
    start.set()
    ends = [result.get(timeout=900) for _ in robots]
    t1 = max(e[0] for e in ends)
    for p in robots:
        p.join(30)
    ingest.terminate()
    ingest.join(30)
    assert all(e[1] for e in ends), "a robot did not drain"
    from vlac.cloud.store.episodes import EpisodeStore

    stats = EpisodeStore(work / "store").stats()
    assert stats["steps"] == n_robots * steps, stats
    wire_bytes = sum(len(m) for m in _encoded_chunks("robot-0", _make_steps(0, steps, chunk)))
    shutil.rmtree(work, ignore_errors=True)
    dt = t1 - t0
    return {"path": "spool+CURVE+ingest+store", "robots": n_robots, "steps": n_robots * steps,
            "seconds": dt, "steps_per_s": n_robots * steps / dt,
            "mb_per_s": n_robots * wire_bytes / dt / 1e6,
            "store_mb": stats["bytes"] / 1e6}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["robots"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.38
    for i, name in enumerate(["raw PUSH/PULL", "spool+CURVE+ingest+store"]):
        vals = [next(r["steps_per_s"] for r in rows if r["robots"] == c and r["path"] == name)
                for c in counts]
        ax.bar([j + (i - 0.5) * width for j in range(len(counts))], vals, width, label=name)
    ax.set_xticks(range(len(counts)), [f"{c} robot{'s' * (c > 1)}" for c in counts])
    ax.set_ylabel("steps/s (128x128 RGB)")
    ax.set_title("Rollout transport throughput, loopback, 2 cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6400,
                    help="steps per measurement, split evenly over the robots")
    ap.add_argument("--chunk-steps", type=int, default=16)
    ap.add_argument("--robots", default="1,8")
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per cell")
    ap.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    counts = [int(c) for c in args.robots.split(",")]
    rows = []
    from rich.console import Console
    from rich.progress import track

    console = Console(width=110)
    cells = [(kind, n) for n in counts for kind in ("raw", "durable")]
    for kind, n in track(cells, description="measuring", console=console):
        steps = args.steps // n
        steps -= steps % args.chunk_steps
        runs = [run_raw(n, steps, args.chunk_steps) if kind == "raw"
                else run_durable(n, steps, args.chunk_steps, args.workdir)
                for _ in range(args.repeats)]
        rows.append(max(runs, key=lambda r: r["steps_per_s"]))
    from rich.table import Table

    table = Table(title=f"transport, 128x128x3 uint8, {args.chunk_steps} steps/chunk, "
                        f"{os.cpu_count()} cores, best of {args.repeats}")
    for col in ("path", "robots", "steps", "seconds", "steps/s", "MB/s", "vs raw"):
        table.add_column(col)
    ratios = []
    for r in rows:
        raw = next(x for x in rows if x["robots"] == r["robots"] and x["path"].startswith("raw"))
        ratio = r["steps_per_s"] / raw["steps_per_s"]
        if not r["path"].startswith("raw"):
            ratios.append(ratio)
        table.add_row(r["path"], str(r["robots"]), str(r["steps"]), f"{r['seconds']:.2f}",
                      f"{r['steps_per_s']:.0f}", f"{r['mb_per_s']:.0f}", f"{ratio:.2f}")
    console.print(table)
    plot(rows, OUT / "transport.png")
    console.print(f"plot: {OUT / 'transport.png'}")
    ratio = min(ratios)
    print(f"ratio_vs_raw={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() > 0 else 1)
