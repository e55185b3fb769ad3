"""Ingest fuzz run: hostile frames from an enrolled robot against a live ingest process,
while honest robots stream through the real spool and sender.

The campaign is ``tests.fuzz_campaign`` (the suite runs it with 250 frames): Hypothesis
draws each frame from ``tests.wire_strategies.frames`` (random bytes and envelopes, deep
nesting, mutated chunks/heartbeats/handshakes, well-typed chunks with wrong arrays, damaged
bytes, valid chunks that contradict each other); after each frame a probe chunk settles it.
If ingest dies, the run restarts it and goes on, and counts the restart.

    python benchmarks/ingest_fuzz.py [--frames 10000] [--honest-robots 4] [--seed 0]

Prints a table per input class, writes benchmarks/out/ingest_fuzz.png and ends with
``frames_sent=<n> error_replies=<n> ingest_restarts=<n>``; ingest_restarts must be 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
sys.path.insert(0, str(ROOT))  # the campaign and its strategies live beside the tests


def _table(report) -> str:
    rows = [f"{'input class':<20}{'frames':>8}{'error replies':>15}"]
    for cls, n in sorted(report.classes.items()):
        rows.append(f"{cls:<20}{n:>8}{report.class_errors[cls]:>15}")
    rows.append(f"{'all':<20}{report.frames:>8}{sum(report.class_errors.values()):>15}")
    rows.append("")
    rows.append("replies: " + ", ".join(f"{k} {v}" for k, v in report.replies.most_common()))
    return "\n".join(rows)


def _plot(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(report.classes)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = range(len(classes))
    a.bar([i - 0.2 for i in x], [report.classes[c] for c in classes], 0.4, label="frames")
    a.bar([i + 0.2 for i in x], [report.class_errors[c] for c in classes], 0.4,
          label="got an Error reply")
    a.set_xticks(list(x), classes, rotation=35, ha="right")
    a.set_title(f"{report.frames} hostile frames, ingest restarts: {report.ingest_deaths}")
    a.legend()
    codes = report.replies.most_common(14)
    b.barh([k for k, _ in codes][::-1], [v for _, v in codes][::-1])
    b.set_title("replies to the fuzzer")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10_000, help="Hostile frames to send.")
    ap.add_argument("--honest-robots", type=int, default=4, help="Robots streaming meanwhile.")
    ap.add_argument("--seed", type=int, default=None, help="Derandomize Hypothesis.")
    ap.add_argument("--workdir", type=Path, default=None, help="Keep keys, store, logs here.")
    args = ap.parse_args(argv)

    from tests.fuzz_campaign import run

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ingest-fuzz-"))
    started = time.monotonic()

    def progress(r) -> None:
        if r.frames % 500 == 0 or r.frames == args.frames:
            print(f"  {r.frames}/{args.frames} frames, {r.error_replies} error replies, "
                  f"{r.ingest_deaths} ingest restarts, {time.monotonic() - started:.0f}s",
                  flush=True)

    report = run(work, args.frames, honest_robots=args.honest_robots, seed=args.seed,
                 progress=progress)
    print(_table(report))
    print(f"honest robots: {report.honest_stored} of {report.honest_sent} episodes stored "
          f"exactly once; ingest alive after the run: {report.alive_after}; a new honest "
          f"chunk acked after it: {report.honest_acked_after}; {report.complete_episodes} "
          f"complete episodes read alike by pandas and load_episode; {report.seconds:.0f}s; "
          f"workdir {work} (ingest.log)")
    if report.store_inconsistent:
        print(f"STORE INCONSISTENT: {report.store_inconsistent}")
    for k in report.killers[:10]:
        print(f"  killer: {k}")
    _plot(report, OUT / "ingest_fuzz.png")
    print(f"frames_sent={report.frames} error_replies={report.error_replies} "
          f"ingest_restarts={report.ingest_deaths}")
    return 0 if report.ingest_deaths == 0 and not report.store_inconsistent else 1


if __name__ == "__main__":
    sys.exit(main())
