"""Fleet benchmark: time from publishing a version to K robots running it, and its bytes.

publisher (this process): Publisher.upload -> object store (artifact, deltas from earlier
                          versions, signed delta index, signed manifest) -> fleet state (add
                          version, promote)
announcer (own process):  polls the fleet state every 50 ms -> one signed announcement per
                          robot on its XPUB topic (the announcement carries the manifest)
robots (K, updater-only): WeightUpdater threads, up to --robots-per-process per OS process:
                          verify -> rebuild from the delta against the running version, or
                          download the artifact -> load it in ONNX Runtime (1 thread) ->
                          health check -> swap, then report (robot, version, time, how)

Each version after the first is the previous one after a typical PPO update
(benchmarks/weight_changes.py: 2% of the head's INT8 weights moved by one step, every fp32
head tensor changed slightly; the frozen encoder unchanged). Per mode (``--modes``: ``full``,
the publisher writing no deltas, so every robot downloads every artifact whole; ``delta``, the
publisher's default of deltas from 2 bases) and per K (default 1, 8, 32) the robots start, v1
is published and applied everywhere (warm-up, a first install: whole), then --updates versions
are published one after the other. The clock for a robot's latency starts when ``upload()``
returns (the version is promoted) and stops when that robot has swapped; ``upload s`` is the
time ``upload()`` itself took (deltas included). Each robot also reports its own transfer
(delta or download, rebuild, sha256 checks) apart from its ONNX Runtime session load: here
K robots share this machine's cores, so loads queue behind each other; on a real fleet each
robot has its own CPU and pays the K=1 load once.

Before the fleet runs, the bytes of one update of each kind (typical PPO update, head
retrained, every weight changed) are measured on the artifact, delta against full, with the
time to make and apply the delta.

The actor is ``--artifact`` when given, else the INT8 export of ``--actor`` (default
``.cache/actor-bc2/actor.pt``, the learning benchmark's starting policy) in its folder's
``export/``, exported first (``vlac actor export``, frames from ``--store-root``) when missing
or older than the actor. Without an actor it refuses, naming the commands that make one
(benchmarks/artifacts.py). ``--toy-artifact`` publishes a tiny generated graph with the same
interface instead, to smoke-test the machinery: its key line ends in ``artifact=toy``.

    python benchmarks/fleet.py [--artifact PATH.onnx | --actor A.pt --store-root STORE |
                               --toy-artifact] [--robots 1,8,32] [--updates 5]
                               [--modes full,delta] [--s3-endpoint URL]

Prints the bytes table, the latency table and where the time goes (upload() returned ->
announcement signed, from the fleet state's ``issued_at``; signed -> swapped, on the robot),
writes benchmarks/out/fleet.png (latency CDF per mode and K) and ends with
``p99_s_32=<x> bytes_per_update=<y> delta_ratio=<z>``: the p99 latency for K=32 with deltas,
the bytes that reach one robot per typical update with deltas (delta index + delta, or
whatever it downloaded, + its announcement, which carries the signed manifest), and that over
the full artifact's bytes; followed by `` artifact=toy`` for a ``--toy-artifact`` run.
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
import weight_changes
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
    """One artifact file per version in ``out`` (``v{n}.onnx``): the first is ``source`` (None:
    a tiny generated graph) as that version, each next one the previous after a typical PPO
    update; returns what they are."""
    out.mkdir(parents=True, exist_ok=True)
    first = out / f"v{versions[0]}.onnx"
    if source is not None:
        import onnx

        model = onnx.load(str(source))
        weight_changes.set_version(model, versions[0])
        onnx.save(model, str(first))
        what = f"exported INT8 actor {source}"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.helpers import tiny_policy_onnx

        tiny_policy_onnx(first, versions[0], seed=versions[0])
        what = "TOY: generated tiny ONNX graph (tests.helpers.tiny_policy_onnx), not a real actor"
    for v in versions[1:]:
        weight_changes.changed(out / f"v{v - 1}.onnx", out / f"v{v}.onnx", "ppo", v, seed=v)
    return f"{what}; each next version a typical PPO update of the one before"


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
    """Updater-only robots as threads of one process; reports swaps (with how the version
    got there: ``WeightUpdater.last_update``) and new errors."""
    from vlac.edge.runtime import OnnxPolicy
    from vlac.edge.updater import WeightUpdater

    updaters = [WeightUpdater(cfg, name, lambda p: OnnxPolicy(p, threads=1), auto_swap=True)
                for name, cfg in cfgs.items()]
    for u in updaters:
        u.on_swap = lambda version, u=u: reports.put((u.robot_id, version, time.time(),
                                                       dict(u.last_update)))
        u.start()
    errors = {u.robot_id: "" for u in updaters}
    while not stop.wait(0.2):
        for u in updaters:
            if u.error and u.error != errors[u.robot_id]:
                reports.put((u.robot_id, -1, u.error, {}))
            errors[u.robot_id] = u.error
    for u in updaters:
        u.stop()
    for u in updaters:
        u.join(5)


# ----------------------------------------------------------------------------- one K
def wait_swaps(reports, robots: list[str], version: int, timeout: float,
               ) -> dict[str, tuple[float, dict]]:
    """(swap time, how it got there) per robot for ``version``; raises naming the stragglers
    and their errors."""
    got: dict[str, tuple[float, dict]] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(robots):
        try:
            robot, v, info, stats = reports.get(timeout=max(0.01,
                                                            deadline - time.monotonic()))
        except queue.Empty:
            missing = sorted(set(robots) - set(got))
            raise RuntimeError(f"after {timeout:.0f}s, {len(missing)} robots do not run "
                               f"version {version}: {missing[:8]}; errors: {errors}") from None
        if v == -1:
            errors[robot] = info
        elif v == version:
            got[robot] = (info, stats)
    return got


def measure(publisher, reports, names: list[str], artifacts: Path, args) -> dict:
    """Publish versions 2.. one at a time; latency = swap time - the moment upload() returned."""
    from vlac.cloud.fleet.publisher import artifact_keys

    cols = {c: [] for c in ("latencies", "announce", "apply", "moved", "transfer", "load",
                            "health")}
    uploads, art_b, man_b, ann_b, via = [], [], [], [], {}
    for v in range(2, args.updates + 2):
        t_start = time.time()
        publisher.upload(artifacts / f"v{v}.onnx", v)
        t0 = time.time()
        swaps = wait_swaps(reports, names, v, args.timeout)
        uploads.append(t0 - t_start)
        issued = publisher.fleet.assignments()  # when the announcer signed each one
        for n in names:
            t, st = swaps[n]
            cols["latencies"].append(t - t0)
            cols["announce"].append(issued[n]["issued_at"] - t0)
            cols["apply"].append(t - issued[n]["issued_at"])
            for col, key in (("moved", "moved"), ("transfer", "transfer_s"),
                             ("load", "load_s"), ("health", "health_s")):
                cols[col].append(st[key])
            via[st["via"]] = via.get(st["via"], 0) + 1
        art_b.append(os.path.getsize(artifacts / f"v{v}.onnx"))
        man_b.append(len(publisher.store.get_bytes(artifact_keys(v)[1])))
        blobs = [publisher.fleet.last_assignment(n) for n in names]
        if not all(b is not None and b[1] == v for b in blobs):
            raise RuntimeError(f"the fleet state's last assignments are not all version {v}")
        ann_b.append(float(np.mean([len(b[2]) for b in blobs])))
    return {**{c: np.array(x) for c, x in cols.items()}, "upload_s": float(np.mean(uploads)),
            "artifact_b": float(np.mean(art_b)), "manifest_b": float(np.mean(man_b)),
            "announcement_b": float(np.mean(ann_b)), "via": via}


def run_fleet(k: int, mode: str, args, artifacts: Path, store_uri: str) -> dict:
    """One fleet of ``k`` robots; ``mode`` ``full``: the publisher writes no deltas."""
    from vlac.cloud.fleet.publisher import Publisher, PublisherConfig
    from vlac.edge.updater import UpdaterConfig

    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix=f"fleet-{mode}-k{k}-"))
    ctx = mp.get_context("spawn")
    cfg = PublisherConfig(fleet_dir=work / "fleet", object_store=store_uri,
                          signing_key=work / "keys" / "publisher.ed25519",
                          bind="tcp://127.0.0.1:0", resend_s=5.0, poll_s=0.05,
                          delta_bases=0 if mode == "full" else args.delta_bases)
    publisher = Publisher(cfg)  # creates the signing key pair the announcer and robots use
    stop, address_q, sent_q, reports = ctx.Event(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    announcer = ctx.Process(target=_announcer, args=(cfg, address_q, sent_q, stop))
    announcer.start()
    hosts = []
    result: dict = {"robots": k, "mode": mode}
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
                linestyle="-" if r["mode"] == "delta" else "--",
                label=f"{r['mode']}, K={r['robots']} ({len(lat)} swaps)")
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
    ap.add_argument("--modes", default="full,delta",
                    help="full (no deltas: whole downloads), delta (the publisher's deltas)")
    ap.add_argument("--delta-bases", type=int, default=2,
                    help="the publisher's delta_bases in delta mode")
    ap.add_argument("--updates", type=int, default=5, help="measured versions per K")
    ap.add_argument("--robots-per-process", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds for one version to reach every robot")
    ap.add_argument("--s3-endpoint", default=None,
                    help="S3 endpoint URL for the object store (keys from AWS_ACCESS_KEY_ID/"
                         "AWS_SECRET_ACCESS_KEY); default: a local folder")
    ap.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    args = ap.parse_args(argv)
    if args.updates < 1 or args.robots_per_process < 1 or args.delta_bases < 1:
        ap.error("--updates, --robots-per-process and --delta-bases must be >= 1")
    if args.toy_artifact and args.artifact is not None:
        ap.error("--toy-artifact and --artifact exclude each other")
    args.mode_list = [m for m in args.modes.split(",") if m]
    if not args.mode_list or set(args.mode_list) - {"full", "delta"}:
        ap.error(f"--modes {args.modes!r}: a comma list of full, delta")
    return args


def store_uri(args: argparse.Namespace, scratch: Path, name: str) -> str:
    """A fresh object store for one fleet: a prefix of the S3 bucket, or a local folder."""
    if args.s3_endpoint:
        from vlac.shared.objstore import S3ObjectStore

        S3ObjectStore(S3_BUCKET, endpoint_url=args.s3_endpoint, create_bucket=True)
        return f"s3://{S3_BUCKET}/fleet-{time.time_ns()}?endpoint={args.s3_endpoint}"
    return str(scratch / f"objects-{name}")


def run_all(args: argparse.Namespace, counts: list[int], console,
            source: Path | None) -> tuple[list[dict], list[dict]]:
    """The artifacts once (from ``source``; None: toy), the bytes of each kind of update,
    then ``run_fleet`` per mode and K: (bytes rows, one fleet row per mode and K)."""
    scratch = Path(tempfile.mkdtemp(dir=args.workdir, prefix="fleet-"))
    rows = []
    try:
        what = make_artifacts(source, range(1, args.updates + 2), scratch / "artifacts")
        size = os.path.getsize(scratch / "artifacts" / "v1.onnx")
        console.print(f"artifact: {what}, {size:,} bytes per version")
        from vlac.cloud.fleet.publisher import PublisherConfig

        sizes = weight_changes.delta_sizes(scratch / "artifacts" / "v1.onnx",
                                           scratch / "kinds", PublisherConfig().delta_max_ratio)
        for mode in args.mode_list:
            for k in counts:
                store = store_uri(args, scratch, f"{mode}-k{k}")
                t = time.perf_counter()
                rows.append(run_fleet(k, mode, args, scratch / "artifacts", store))
                console.print(f"{mode}, K={k}: {rows[-1]['processes']} robot processes, "
                              f"{time.perf_counter() - t:.1f}s incl. start-up and warm-up")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return sizes, rows


def print_sizes(console, sizes: list[dict], toy: bool) -> None:
    """Bytes of one update of each kind, delta against the whole artifact."""
    from rich.table import Table

    table = Table(title=f"{'TOY ARTIFACT (not a figure): ' if toy else ''}bytes of one update, "
                        "delta against the previous version vs the whole artifact")
    for col in ("update", "full bytes", "delta bytes", "delta/full", "make s", "apply s",
                "publisher writes it"):
        table.add_column(col, justify="right")
    for r in sizes:
        table.add_row(r["what"], f"{r['full_b']:,}", f"{r['delta_b']:,}",
                      f"{r['delta_b'] / r['full_b']:.4f}", f"{r['make_s']:.2f}",
                      f"{r['apply_s']:.3f}", "yes" if r["written"] else "no: whole download")
    console.print(table)


def _pct(a: np.ndarray, q: float) -> str:
    return f"{np.percentile(a, q):.3f}"


def print_table(console, rows: list[dict], args: argparse.Namespace) -> None:
    """The latency and bytes table; adds ``p99`` and ``per_robot_b`` to each row."""
    from rich.table import Table

    toy = "TOY ARTIFACT (not a figure): " if args.toy_artifact else ""
    table = Table(title=f"{toy}publish -> K robots running it, {args.updates} updates per K, "
                        f"{'S3 ' + args.s3_endpoint if args.s3_endpoint else 'local-folder'} "
                        f"store, {os.cpu_count()} cores shared by all K robots")
    for col in ("mode", "K", "p50 s", "p99 s", "max s", "upload s", "transfer s\np50/p99",
                "ORT load s\np50/p99", "bytes/robot/update\n(moved+ann.)",
                "total bytes/update\n(x K)"):
        table.add_column(col, justify="right")
    for r in rows:
        lat = r["latencies"]
        r["p99"] = float(np.percentile(lat, 99))
        r["per_robot_b"] = float(np.mean(r["moved"])) + r["announcement_b"]
        table.add_row(r["mode"], str(r["robots"]), _pct(lat, 50), f"{r['p99']:.3f}",
                      f"{lat.max():.3f}", f"{r['upload_s']:.3f}",
                      f"{_pct(r['transfer'], 50)}/{_pct(r['transfer'], 99)}",
                      f"{_pct(r['load'], 50)}/{_pct(r['load'], 99)}",
                      f"{r['per_robot_b']:,.0f}", f"{r['per_robot_b'] * r['robots']:,.0f}")
    console.print(table)


def print_breakdown(console, rows: list[dict], updates: int) -> None:
    """Bytes per robot, where the time goes, and how many announcements were sent."""
    for r in rows:
        console.print(f"{r['mode']}, K={r['robots']}: per robot per update "
                      f"{np.mean(r['moved']):,.0f} B from the object store (how: "
                      f"{r['via']}; artifact "
                      f"{r['artifact_b']:,.0f} B) + announcement {r['announcement_b']:,.0f} B "
                      f"(XPUB; it carries the signed manifest, {r['manifest_b']:,.0f} B); "
                      f"health check p50 {_pct(r['health'], 50)}s")
    for r in rows:
        console.print(f"{r['mode']}, K={r['robots']}: upload() returned -> announcement "
                      f"signed: p50 {_pct(r['announce'], 50)}s max {r['announce'].max():.3f}s; "
                      f"signed -> robot swapped (verify, transfer, load, health check): p50 "
                      f"{_pct(r['apply'], 50)}s max {r['apply'].max():.3f}s")
    for r in rows:
        sends = r["sent"] / (r["robots"] * (updates + 1))
        console.print(f"{r['mode']}, K={r['robots']}: announcer sent {r['sent']} messages, "
                      f"{sends:.1f} per robot per version (above 1: the 5 s re-sends, which "
                      "robots ignore)")


def key_line(p99_32: float, per_robot: float, ratio: float, toy: bool) -> str:
    """The last line; a toy run says so, so that it is never read as a real figure."""
    line = f"p99_s_32={p99_32:.3f} bytes_per_update={per_robot:.0f} delta_ratio={ratio:.4f}"
    return f"{line} artifact=toy" if toy else line


def headline(rows: list[dict]) -> tuple[float, float, float]:
    """(p99 at K=32, bytes per robot per update, that / the artifact's bytes), from the delta
    rows (the full ones when there are none)."""
    mode = "delta" if any(r["mode"] == "delta" for r in rows) else "full"
    mine = [r for r in rows if r["mode"] == mode]
    at32 = next((r for r in mine if r["robots"] == 32), None)
    ref = at32 or mine[-1]
    return (at32["p99"] if at32 else float("nan"), ref["per_robot_b"],
            ref["per_robot_b"] / ref["artifact_b"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    counts = [int(c) for c in args.robots.split(",")]
    from rich.console import Console

    console = Console(width=130)
    source = None if args.toy_artifact else real_artifact(args, console.print)
    if source is None:
        console.print("[yellow]--toy-artifact: publishing a tiny generated graph; the figures "
                      "below measure the machinery, not what a fleet ships")
    args.workdir.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(exist_ok=True)
    sizes, rows = run_all(args, counts, console, source)
    print_sizes(console, sizes, args.toy_artifact)
    print_table(console, rows, args)
    print_breakdown(console, rows, args.updates)
    plot(rows, OUT / "fleet.png", args.toy_artifact)
    console.print(f"plot: {OUT / 'fleet.png'}")
    p99_32, per_robot, ratio = headline(rows)
    print(key_line(p99_32, per_robot, ratio, args.toy_artifact))
    return {"rows": rows, "sizes": sizes, "p99_s_32": p99_32, "bytes_per_update": per_robot,
            "delta_ratio": ratio, "artifact": "toy" if source is None else str(source)}


if __name__ == "__main__":
    main()
    sys.exit(0)
