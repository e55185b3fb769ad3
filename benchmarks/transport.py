"""Transport benchmark: the durable, authenticated path against the disk it writes to.

durable path: robot process -> encode chunk (camera blocks zstd or raw) -> spool (fsync) ->
              sender (DEALER, CURVE) -> ingest process (ROUTER, CURVE, decompress, validate,
              dedupe) -> Parquet store (fsync) -> ack
disk:         the same bytes the durable path wrote (spool files and store files, of the same
              sizes, from as many writers), each file fsynced: the disk's own limit
raw baseline: robot process -> PUSH the same encoded chunk bytes -> PULL process (no disk,
              no encryption, no acks)

Frames are real Meta-World renders at 128x128 (expert episodes of four tasks, rendered once
into ``--workdir``; consecutive frames, as a robot records them), since compression depends
on what the camera sees; ``--frames synthetic`` uses the generated test frames instead. They
are made before the clock starts; the clock runs from a common start signal until the last
chunk is acknowledged (durable) or received (raw).

    python benchmarks/transport.py [--steps 25600] [--chunk-steps 64] [--robots 1,8]
                                   [--codecs zstd,none]

Prints a table, writes benchmarks/out/transport.png and ends with
``ratio_vs_disk=<x> steps_per_s_8=<y> wire_bytes_per_step=<z>`` for the default codec:
with the most robots measured, the durable path's steps/s over the steps/s the disk sustains
for the same bytes per step; the durable path's steps/s; and its encoded chunk bytes per step.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from vlac.edge.transport.recorder import DEFAULT_CHUNK_STEPS
from vlac.shared.net import free_port
from vlac.shared.wire import DEFAULT_IMAGE_CODEC

OUT = Path(__file__).parent / "out"
FRAME_TASKS = ("drawer-open-v3", "push-v3", "button-press-v3", "pick-place-v3")


def metaworld_frames(workdir: Path, n: int = 640) -> Path:
    """``n`` consecutive 128x128 corner-camera frames of scripted-expert episodes, cached."""
    path = workdir / f"transport-frames-{n}.npy"
    if path.exists():
        return path
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig

    frames: list[np.ndarray] = []
    per_task = n // len(FRAME_TASKS)
    for task in FRAME_TASKS:
        with MetaWorldRobot(MetaWorldRobotConfig(task=task, max_steps=per_task)) as robot:
            obs = robot.reset()
            for _ in range(per_task):
                frames.append(obs.images["corner"])
                res = robot.act(robot.expert_action(obs))
                obs = robot.reset() if res.done else res.observation
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.stack(frames))
    os.replace(tmp, path)
    return path


def _make_steps(robot: int, steps: int, chunk: int, frames_path: str):
    from vlac.shared.episode import synthetic_steps
    from vlac.shared.wire import DEFAULT_SPEC

    parts = [synthetic_steps(DEFAULT_SPEC, chunk, start_step=s, seed=robot)
             for s in range(0, steps, chunk)]
    if frames_path:  # real frames, each robot from its own offset in the recording
        frames = np.load(frames_path)
        at = (robot * 97 + np.arange(steps)) % len(frames)
        for i, p in enumerate(parts):
            p.images["corner"] = frames[at[i * chunk:(i + 1) * chunk]]
    return parts


def _encoded_chunks(robot_id: str, parts, codec: str) -> list[bytes]:
    from vlac.shared import wire
    from vlac.shared.episode import make_chunk

    out = []
    for i, p in enumerate(parts):
        final = wire.Outcome(success=True, n_chunks=len(parts), n_steps=len(parts) * len(p)) \
            if i == len(parts) - 1 else None
        out.append(wire.encode(make_chunk(robot_id, "bench-ep", i, "push the puck", p, final,
                                          first_step=i * len(p), image_codec=codec)))
    return out


# ----------------------------------------------------------------------------- raw
def _raw_robot(address: str, robot: int, steps: int, chunk: int, frames: str, codec: str,
               start, ready) -> None:
    msgs = _encoded_chunks(f"robot-{robot}", _make_steps(robot, steps, chunk, frames), codec)
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


def run_raw(n_robots: int, steps: int, chunk: int, frames: str, codec: str) -> dict:
    ctx = mp.get_context("spawn")
    address = f"tcp://127.0.0.1:{free_port()}"
    start, ready, result = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    sink = ctx.Process(target=_raw_sink, args=(address, n_robots * (steps // chunk), result))
    sink.start()
    robots = [ctx.Process(target=_raw_robot,
                          args=(address, r, steps, chunk, frames, codec, start, ready))
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
    return {"path": "raw PUSH/PULL", "codec": codec, "robots": n_robots,
            "steps": n_robots * steps, "seconds": dt, "steps_per_s": n_robots * steps / dt,
            "wire_bytes_per_step": nbytes / (n_robots * steps)}


# ----------------------------------------------------------------------------- durable
def _durable_robot(sender_cfg, robot: int, steps: int, chunk: int, frames: str, start, ready,
                   result) -> None:
    from vlac.edge.transport.recorder import EpisodeRecorder
    from vlac.edge.transport.sender import Sender
    from vlac.shared.wire import DEFAULT_SPEC

    parts = _make_steps(robot, steps, chunk, frames)
    spool = sender_cfg.make_spool()
    with Sender(sender_cfg, spool, DEFAULT_SPEC) as sender:
        while not sender.connected:  # connect and handshake before the clock starts
            time.sleep(0.01)
        ready.release()
        start.wait()
        rec = EpisodeRecorder(spool, sender_cfg.robot_id, "push the puck", chunk_steps=chunk,
                              image_codec=sender_cfg.image_codec)
        for p in parts:
            rec.add(p)
        rec.end(success=True)
        ok = sender.wait_drained(600)
        result.put((time.perf_counter(), ok))


def _ingest(cfg, ready_q) -> None:
    import signal

    from vlac.cloud.ingest.service import Ingest

    ingest = Ingest(cfg)
    threading.Thread(target=lambda: ready_q.put(ingest.wait_ready()), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: ingest.stop())
    ingest.serve()


def run_durable(n_robots: int, steps: int, chunk: int, frames: str, codec: str,
                workdir: Path) -> dict:
    from vlac.cloud.ingest.service import IngestConfig
    from vlac.cloud.store.episodes import EpisodeStore
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
                            spool_dir=work / "spool" / name, image_codec=codec)
        robots.append(ctx.Process(target=_durable_robot, args=(scfg, r, steps, chunk, frames,
                                                               start, ready, result)))
        robots[-1].start()
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
    stats = EpisodeStore(work / "store").stats()
    assert stats["steps"] == n_robots * steps, stats
    store_files = sorted(work.glob("store/episodes/*/*/chunk-*.parquet"))
    wire_sizes = [len(m) for m in _encoded_chunks("robot-0", _make_steps(0, steps, chunk,
                                                                         frames), codec)]
    shutil.rmtree(work, ignore_errors=True)
    dt = t1 - t0
    total = n_robots * steps
    spool_bytes = n_robots * sum(wire_sizes)  # the spool holds each encoded chunk once
    return {"path": "spool+CURVE+ingest+store", "codec": codec, "robots": n_robots,
            "steps": total, "seconds": dt, "steps_per_s": total / dt,
            "wire_bytes_per_step": sum(wire_sizes) / steps,
            "written_bytes_per_step": (spool_bytes + stats["bytes"]) / total,
            "spool_file": int(np.mean(wire_sizes)),
            "store_file": int(stats["bytes"] / max(1, len(store_files)))}


# ----------------------------------------------------------------------------- disk
def disk_sync_write(workdir: Path, writers: list[tuple[int, int]]) -> float:
    """Bytes/s the disk takes when ``writers`` (file size, files) run at once, each file
    written and fsynced before the next: the durable path's two durable writes, with nothing
    else in the way."""
    work = Path(tempfile.mkdtemp(dir=workdir))

    def write(w: int, size: int, count: int) -> None:
        block = os.urandom(size)  # incompressible, whatever the file system does
        folder = work / str(w)
        folder.mkdir()
        for i in range(count):
            with open(folder / f"{i}.bin", "wb") as f:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())

    threads = [threading.Thread(target=write, args=(w, size, count))
               for w, (size, count) in enumerate(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return sum(size * count for size, count in writers) / dt


def disk_row(d: dict, chunk: int, workdir: Path) -> dict:
    """The disk's limit for the durable row ``d``: its robots' spool files and ingest's store
    files, as many as it wrote, and the steps/s those bytes per step allow."""
    n_files = d["steps"] // d["robots"] // chunk
    writers = [(d["spool_file"], n_files)] * d["robots"] + \
        [(d["store_file"], n_files * d["robots"])]
    bw = disk_sync_write(workdir, writers)
    return {"path": "disk, fsync per file", "codec": d["codec"], "robots": d["robots"],
            "steps": d["steps"], "seconds": d["steps"] * d["written_bytes_per_step"] / bw,
            "steps_per_s": bw / d["written_bytes_per_step"],
            "wire_bytes_per_step": float("nan"), "mb_per_s": bw / 1e6}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["robots"] for r in rows})
    series = sorted({(r["path"], r["codec"]) for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(series)
    for i, (name, codec) in enumerate(series):
        vals = [next((r["steps_per_s"] for r in rows if r["robots"] == c
                      and (r["path"], r["codec"]) == (name, codec)), 0) for c in counts]
        ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(counts))], vals,
               width, label=f"{name}, images {codec}")
    ax.set_xticks(range(len(counts)), [f"{c} robot{'s' * (c > 1)}" for c in counts])
    ax.set_ylabel("steps/s (128x128 RGB)")
    ax.set_yscale("log")
    ax.set_title("Rollout transport against the disk's own limit, loopback, "
                 f"{os.cpu_count()} cores")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure(args, frames: str) -> list[dict]:
    from rich.progress import track

    counts = [int(c) for c in args.robots.split(",")]
    codecs = args.codecs.split(",")
    cells = [(kind, n, codec) for n in counts for codec in codecs
             for kind in ("raw", "durable")]
    rows = []
    for kind, n, codec in track(cells, description="measuring"):
        steps = args.steps // n
        steps -= steps % args.chunk_steps
        runs = [run_raw(n, steps, args.chunk_steps, frames, codec) if kind == "raw"
                else run_durable(n, steps, args.chunk_steps, frames, codec, args.workdir)
                for _ in range(args.repeats)]
        rows.append(max(runs, key=lambda r: r["steps_per_s"]))
        if kind == "durable":
            rows.append(max((disk_row(rows[-1], args.chunk_steps, args.workdir)
                             for _ in range(args.repeats)), key=lambda r: r["steps_per_s"]))
    return rows


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=25600,
                    help="steps per measurement, split evenly over the robots")
    ap.add_argument("--chunk-steps", type=int, default=DEFAULT_CHUNK_STEPS,
                    help="steps per chunk (default: the robot's)")
    ap.add_argument("--robots", default="1,8")
    ap.add_argument("--codecs", default=f"{DEFAULT_IMAGE_CODEC},none",
                    help="image codecs to measure; the first one is the key line's")
    ap.add_argument("--frames", choices=("metaworld", "synthetic"), default="metaworld")
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per cell")
    ap.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    frames = str(metaworld_frames(args.workdir)) if args.frames == "metaworld" else ""
    rows = measure(args, frames)
    table = Table(title=f"transport, 128x128x3 uint8 {args.frames} frames, {args.chunk_steps} "
                        f"steps/chunk, {os.cpu_count()} cores, best of {args.repeats}")
    frame_bytes = 128 * 128 * 3  # one camera's frame: what the robot records per step
    for col in ("path", "images", "robots", "steps", "seconds", "steps/s", "frames MB/s",
                "wire B/step", "written B/step", "vs disk", "vs raw"):
        table.add_column(col, justify="left" if col in ("path", "images") else "right")
    for r in rows:
        same = [x for x in rows if (x["robots"], x["codec"]) == (r["robots"], r["codec"])]
        raw = next(x for x in same if x["path"].startswith("raw"))
        disk = next(x for x in same if x["path"].startswith("disk"))
        durable = not r["path"].startswith(("raw", "disk"))
        r["vs_disk"] = r["steps_per_s"] / disk["steps_per_s"]
        wire_b = r["wire_bytes_per_step"]
        table.add_row(r["path"], r["codec"], str(r["robots"]), str(r["steps"]),
                      f"{r['seconds']:.2f}", f"{r['steps_per_s']:.0f}",
                      f"{r['steps_per_s'] * frame_bytes / 1e6:.0f}",
                      "" if wire_b != wire_b else f"{wire_b:.0f}",
                      f"{r['written_bytes_per_step']:.0f}" if durable else "",
                      f"{r['vs_disk']:.2f}" if durable else "",
                      f"{r['steps_per_s'] / raw['steps_per_s']:.2f}")
    console.print(table)
    plot(rows, OUT / "transport.png")
    console.print(f"plot: {OUT / 'transport.png'}")
    most = max(r["robots"] for r in rows)
    key = next(r for r in rows if r["path"].startswith("spool") and r["robots"] == most
               and r["codec"] == args.codecs.split(",")[0])
    print(f"ratio_vs_disk={key['vs_disk']:.2f} steps_per_s_{most}={key['steps_per_s']:.0f} "
          f"wire_bytes_per_step={key['wire_bytes_per_step']:.0f}")
    return key["vs_disk"]


if __name__ == "__main__":
    sys.exit(0 if main() > 0 else 1)
