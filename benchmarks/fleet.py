"""Fleet benchmark: time from publishing a version to K robots running it.

publisher (this process): Publisher.upload -> object store (artifact + signed manifest) ->
                          fleet state (add version, promote)
announcer (own process):  polls the fleet state every 50 ms -> one signed announcement per
                          robot on its XPUB topic (the announcement carries the manifest)
robots (K, updater-only): WeightUpdater threads, up to --robots-per-process per OS process:
                          verify -> download the artifact -> load it in ONNX Runtime (1 thread)
                          -> health check -> swap, then report (robot, version, time.time())

Per K (default 1, 8, 32) the robots start, v1 is published and applied everywhere (warm-up,
not measured), then --updates versions are published one after the other. The clock for a
robot's latency starts when ``upload()`` returns (the version is promoted) and stops when that
robot has swapped; ``upload s`` is the time ``upload()`` itself took. Each version is its own
file: the exported INT8 actor with its metadata's policy_version rewritten.

The actor is ``--artifact`` when given, else the INT8 export of ``--actor`` (default
``.cache/actor-bc2/actor.pt``, the learning benchmark's starting policy) in its folder's
``export/``, exported first (``vlac actor export``, frames from ``--store-root``) when missing
or older than the actor. Without an actor it refuses, naming the commands that make one
(benchmarks/artifacts.py). ``--toy-artifact`` publishes a tiny generated graph with the same
interface instead, to smoke-test the machinery: its key line ends in ``artifact=toy``.

    python benchmarks/fleet.py [--artifact PATH.onnx | --actor A.pt --store-root STORE |
                               --toy-artifact] [--robots 1,8,32] [--updates 5]
                               [--s3-endpoint URL]

Prints a table and where the time goes (upload() returned -> announcement signed, from the
fleet state's ``issued_at``; signed -> swapped, on the robot), writes benchmarks/out/fleet.png
(latency CDF per K) and ends with
``p99_s_32=<x> bytes_per_update=<y>``: the p99 latency for K=32 and the bytes that reach one
robot per update (artifact download + its announcement, which carries the signed manifest),
followed by `` artifact=toy`` for a ``--toy-artifact`` run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from artifacts import DEFAULT_ACTOR, DEFAULT_STORE, ActorSource, ensure_int8

OUT = Path(__file__).parent / "out"
S3_BUCKET = "vlac-bench"


# ----------------------------------------------------------------------------- artifacts
def real_artifact(args: argparse.Namespace, say=print) -> Path:
    """The exported INT8 actor to publish: ``--artifact``, else ``--actor``'s export (made
    when missing); refuses (``SystemExit``) naming the commands when neither can be had."""
    if args.artifact is not None:
        if not args.artifact.exists():
            raise SystemExit(f"{args.artifact} does not exist; export an actor with `vlac "
                             "actor export --actor A.pt --out DIR --store-root STORE` and "
                             "pass DIR/actor_int8.onnx")
        return args.artifact
    return ensure_int8(ActorSource(actor=args.actor, store_root=args.store_root), "artifact",
                       say)


def make_artifacts(source: Path | None, versions: range, out: Path) -> str:
    """One artifact file per version in ``out`` (``v{n}.onnx``): ``source`` with each
    version's policy_version, or (None) a tiny generated graph; returns what they are."""
    out.mkdir(parents=True, exist_ok=True)
    if source is not None:
        import json

        import onnx

        model = onnx.load(str(source))
        prop = next((p for p in model.metadata_props if p.key == "vlac"), None)
        if prop is None:
            raise SystemExit(f"{source} has no vlac metadata; export it with "
                             "`vlac actor export`")
        meta = json.loads(prop.value)
        for v in versions:
            meta["policy_version"] = v
            prop.value = json.dumps(meta)
            onnx.save(model, str(out / f"v{v}.onnx"))
        return f"exported INT8 actor {source}"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers import tiny_policy_onnx

    for v in versions:
        tiny_policy_onnx(out / f"v{v}.onnx", v, seed=v)
    return "TOY: generated tiny ONNX graph (tests.helpers.tiny_policy_onnx), not a real actor"


# ----------------------------------------------------------------------------- processes
def _announcer(cfg, address_q, result_q, stop) -> None:
    from vlac.cloud.fleet.publisher import Announcer

    ann = Announcer(cfg)
    address_q.put(ann.address)
    try:
        ann.run(stop)
    finally:
        result_q.put(ann.sent)
        ann.close()


def _robot_host(cfgs: dict, reports, stop) -> None:
    """Updater-only robots as threads of one process; reports swaps and new errors."""
    from vlac.edge.runtime import OnnxPolicy
    from vlac.edge.updater import WeightUpdater

    def report_swap(robot_id: str):
        return lambda version: reports.put((robot_id, version, time.time()))

    updaters = [WeightUpdater(cfg, name, lambda p: OnnxPolicy(p, threads=1), auto_swap=True,
                              on_swap=report_swap(name)) for name, cfg in cfgs.items()]
    for u in updaters:
        u.start()
    errors = {u.robot_id: "" for u in updaters}
    while not stop.wait(0.2):
        for u in updaters:
            if u.error and u.error != errors[u.robot_id]:
                reports.put((u.robot_id, -1, u.error))
            errors[u.robot_id] = u.error
    for u in updaters:
        u.stop()
    for u in updaters:
        u.join(5)


# ----------------------------------------------------------------------------- one K
def wait_swaps(reports, robots: list[str], version: int, timeout: float) -> dict[str, float]:
    """Swap time per robot for ``version``; raises naming the stragglers and their errors."""
    got: dict[str, float] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(robots):
        try:
            robot, v, info = reports.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            missing = sorted(set(robots) - set(got))
            raise RuntimeError(f"after {timeout:.0f}s, {len(missing)} robots do not run "
                               f"version {version}: {missing[:8]}; errors: {errors}") from None
        if v == -1:
            errors[robot] = info
        elif v == version:
            got[robot] = info
    return got


def measure(publisher, reports, names: list[str], artifacts: Path, args) -> dict:
    """Publish versions 2.. one at a time; latency = swap time - the moment upload() returned."""
    from vlac.cloud.fleet.publisher import artifact_keys

    latencies, announce, apply, uploads, art_b, man_b, ann_b = [], [], [], [], [], [], []
    for v in range(2, args.updates + 2):
        t_start = time.time()
        publisher.upload(artifacts / f"v{v}.onnx", v)
        t0 = time.time()
        swaps = wait_swaps(reports, names, v, args.timeout)
        uploads.append(t0 - t_start)
        latencies += [t - t0 for t in swaps.values()]
        issued = publisher.fleet.assignments()  # when the announcer signed each one
        announce += [issued[n]["issued_at"] - t0 for n in names]
        apply += [swaps[n] - issued[n]["issued_at"] for n in names]
        art_b.append(os.path.getsize(artifacts / f"v{v}.onnx"))
        man_b.append(len(publisher.store.get_bytes(artifact_keys(v)[1])))
        blobs = [publisher.fleet.last_assignment(n) for n in names]
        if not all(b is not None and b[1] == v for b in blobs):
            raise RuntimeError(f"the fleet state's last assignments are not all version {v}")
        ann_b.append(float(np.mean([len(b[2]) for b in blobs])))
    return {"latencies": np.array(latencies), "announce": np.array(announce),
            "apply": np.array(apply), "upload_s": float(np.mean(uploads)),
            "artifact_b": float(np.mean(art_b)), "manifest_b": float(np.mean(man_b)),
            "announcement_b": float(np.mean(ann_b))}


def run_fleet(k: int, args, artifacts: Path, workdir: Path, store_uri: str) -> dict:
    from vlac.cloud.fleet.publisher import Publisher, PublisherConfig
    from vlac.edge.updater import UpdaterConfig

    work = Path(tempfile.mkdtemp(dir=workdir, prefix=f"fleet-k{k}-"))
    ctx = mp.get_context("spawn")
    cfg = PublisherConfig(fleet_dir=work / "fleet", object_store=store_uri,
                          signing_key=work / "keys" / "publisher.ed25519",
                          bind="tcp://127.0.0.1:0", resend_s=5.0, poll_s=0.05)
    publisher = Publisher(cfg)  # creates the signing key pair the announcer and robots use
    stop, address_q, sent_q, reports = ctx.Event(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    announcer = ctx.Process(target=_announcer, args=(cfg, address_q, sent_q, stop))
    announcer.start()
    hosts = []
    result: dict = {"robots": k}
    try:
        address = address_q.get(timeout=60)
        names = [f"robot-{i}" for i in range(k)]
        for i in range(0, k, args.robots_per_process):
            cfgs = {n: UpdaterConfig(publisher_address=address, object_store=store_uri,
                                     publisher_key=work / "keys" / "publisher.ed25519.pub",
                                     state_dir=work / "robots" / n)
                    for n in names[i:i + args.robots_per_process]}
            hosts.append(ctx.Process(target=_robot_host, args=(cfgs, reports, stop)))
            hosts[-1].start()
        publisher.upload(artifacts / "v1.onnx", 1)  # warm-up: processes start, subscribe
        wait_swaps(reports, names, 1, args.timeout + 60)
        result.update(measure(publisher, reports, names, artifacts, args), processes=len(hosts))
    finally:
        stop.set()
        for p in hosts:
            p.join(30)
        try:
            result["sent"] = sent_q.get(timeout=10)
        except queue.Empty:
            result["sent"] = -1
        announcer.join(10)
        for p in [*hosts, announcer]:
            if p.is_alive():
                print(f"process {p.pid} did not stop; terminating it", file=sys.stderr)
                p.terminate()
                p.join(5)
        publisher.fleet.close()
        if store_uri.startswith("s3://"):
            for key in publisher.store.list():
                publisher.store.delete(key)
        shutil.rmtree(work, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- report
def plot(rows: list[dict], path: Path, toy: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        lat = np.sort(r["latencies"])
        ax.step(lat, np.arange(1, len(lat) + 1) / len(lat), where="post",
                label=f"K={r['robots']} ({len(lat)} swaps)")
    ax.set_xlabel("seconds from upload() returned to the robot running it")
    ax.set_ylabel("fraction of robot updates")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{'TOY artifact: ' if toy else ''}Weight rollout latency CDF, loopback, "
                 f"{os.cpu_count()} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, default=None,
                    help="exported INT8 actor to publish (default: --actor's export)")
    ap.add_argument("--actor", type=Path, default=DEFAULT_ACTOR,
                    help="actor checkpoint whose <folder>/export/actor_int8.onnx is published, "
                         "exported first when missing or older than the actor")
    ap.add_argument("--store-root", type=Path, default=DEFAULT_STORE,
                    help="episode store with demonstrations of the actor's tasks (the "
                         "export's example frames)")
    ap.add_argument("--toy-artifact", action="store_true",
                    help="publish a tiny generated graph instead (a smoke test of the "
                         "machinery, not a figure: the key line ends in artifact=toy)")
    ap.add_argument("--robots", default="1,8,32", help="fleet sizes K, comma-separated")
    ap.add_argument("--updates", type=int, default=5, help="measured versions per K")
    ap.add_argument("--robots-per-process", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds for one version to reach every robot")
    ap.add_argument("--s3-endpoint", default=None,
                    help="S3 endpoint URL for the object store (keys from AWS_ACCESS_KEY_ID/"
                         "AWS_SECRET_ACCESS_KEY); default: a local folder")
    ap.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    args = ap.parse_args(argv)
    if args.updates < 1 or args.robots_per_process < 1:
        ap.error("--updates and --robots-per-process must be >= 1")
    if args.toy_artifact and args.artifact is not None:
        ap.error("--toy-artifact and --artifact exclude each other")
    return args


def store_uri(args: argparse.Namespace, scratch: Path, k: int) -> str:
    """A fresh object store for one K: a prefix of the S3 bucket, or a local folder."""
    if args.s3_endpoint:
        from vlac.shared.objstore import S3ObjectStore

        S3ObjectStore(S3_BUCKET, endpoint_url=args.s3_endpoint, create_bucket=True)
        return f"s3://{S3_BUCKET}/fleet-{time.time_ns()}?endpoint={args.s3_endpoint}"
    return str(scratch / f"objects-k{k}")


def run_all(args: argparse.Namespace, counts: list[int], console,
            source: Path | None) -> list[dict]:
    """The artifacts once (from ``source``; None: toy), then ``run_fleet`` per K; one row
    per K."""
    scratch = Path(tempfile.mkdtemp(dir=args.workdir, prefix="fleet-"))
    rows = []
    try:
        what = make_artifacts(source, range(1, args.updates + 2), scratch / "artifacts")
        size = os.path.getsize(scratch / "artifacts" / "v1.onnx")
        console.print(f"artifact: {what}, {size:,} bytes per version")
        for k in counts:
            store = store_uri(args, scratch, k)
            t = time.perf_counter()
            rows.append(run_fleet(k, args, scratch / "artifacts", args.workdir, store))
            console.print(f"K={k}: {rows[-1]['processes']} robot processes, "
                          f"{time.perf_counter() - t:.1f}s incl. start-up and warm-up")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def print_table(console, rows: list[dict], args: argparse.Namespace) -> None:
    """The latency and bytes table; adds ``p99`` and ``per_robot_b`` to each row."""
    from rich.table import Table

    toy = "TOY ARTIFACT (not a figure): " if args.toy_artifact else ""
    table = Table(title=f"{toy}publish -> K robots running it, {args.updates} updates per K, "
                        f"{'S3 ' + args.s3_endpoint if args.s3_endpoint else 'local-folder'} "
                        f"store, {os.cpu_count()} cores")
    for col in ("K", "updates", "p50 s", "p99 s", "max s", "upload s",
                "bytes/robot/update\n(artifact+ann.)", "total bytes/update\n(x K)"):
        table.add_column(col, justify="right")
    for r in rows:
        lat = r["latencies"]
        r["p99"] = float(np.percentile(lat, 99))
        r["per_robot_b"] = r["artifact_b"] + r["announcement_b"]
        table.add_row(str(r["robots"]), str(args.updates), f"{np.percentile(lat, 50):.3f}",
                      f"{r['p99']:.3f}", f"{lat.max():.3f}", f"{r['upload_s']:.3f}",
                      f"{r['per_robot_b']:,.0f}", f"{r['per_robot_b'] * r['robots']:,.0f}")
    console.print(table)


def print_breakdown(console, rows: list[dict], updates: int) -> None:
    """Bytes per robot, where the time goes, and how many announcements were sent."""
    r = rows[-1]
    console.print(f"per robot per update: artifact {r['artifact_b']:,.0f} B (object store) + "
                  f"announcement {r['announcement_b']:,.0f} B (XPUB; it carries the signed "
                  f"manifest, {r['manifest_b']:,.0f} B, which robots never fetch from the store)")
    for r in rows:
        console.print(f"K={r['robots']}: upload() returned -> announcement signed: p50 "
                      f"{np.percentile(r['announce'], 50):.3f}s max {r['announce'].max():.3f}s; "
                      f"signed -> robot swapped (verify, download, load, health check): p50 "
                      f"{np.percentile(r['apply'], 50):.3f}s max {r['apply'].max():.3f}s")
    for r in rows:
        sends = r["sent"] / (r["robots"] * (updates + 1))
        console.print(f"K={r['robots']}: announcer sent {r['sent']} messages, {sends:.1f} per "
                      f"robot per version (above 1: the 5 s re-sends, which robots ignore)")


def key_line(p99_32: float, per_robot: float, toy: bool) -> str:
    """The last line; a toy run says so, so that it is never read as a real figure."""
    line = f"p99_s_32={p99_32:.3f} bytes_per_update={per_robot:.0f}"
    return f"{line} artifact=toy" if toy else line


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    counts = [int(c) for c in args.robots.split(",")]
    from rich.console import Console

    console = Console(width=110)
    source = None if args.toy_artifact else real_artifact(args, console.print)
    if source is None:
        console.print("[yellow]--toy-artifact: publishing a tiny generated graph; the figures "
                      "below measure the machinery, not what a fleet ships")
    args.workdir.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    rows = run_all(args, counts, console, source)
    print_table(console, rows, args)
    print_breakdown(console, rows, args.updates)
    plot(rows, OUT / "fleet.png", args.toy_artifact)
    console.print(f"plot: {OUT / 'fleet.png'}")
    at32 = next((r for r in rows if r["robots"] == 32), None)
    p99_32 = at32["p99"] if at32 else float("nan")
    per_robot = (at32 or rows[-1])["per_robot_b"]
    print(key_line(p99_32, per_robot, args.toy_artifact))
    return {"rows": rows, "p99_s_32": p99_32, "bytes_per_update": per_robot,
            "artifact": "toy" if source is None else str(source)}


if __name__ == "__main__":
    main()
    sys.exit(0)
