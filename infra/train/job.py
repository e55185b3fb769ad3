"""`vlac train` from start to end: prepare, run every part as a process, watch, report."""

from __future__ import annotations

import logging
import time
import traceback

from vlac.infra.train.config import Paths, TrainConfig
from vlac.infra.train.launch import Launcher
from vlac.infra.train.logs import JobConsole, job_console
from vlac.infra.train.prepare import prepare
from vlac.infra.train.processes import start_all, stop_order
from vlac.infra.train.report import report
from vlac.infra.train.watch import policy_episodes, watch
from vlac.shared.config import describe
from vlac.shared.signals import stop_event


def main(cfg: TrainConfig) -> dict:
    """The whole job; returns the report's summary. ``vlac -v train`` (the root logger at
    DEBUG) shows third-party logs, warnings and the processes' output on the console;
    otherwise they go to ``WORKDIR/logs/``."""
    p = Paths(cfg.workdir, cfg.object_store)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    with job_console(p.logs, verbose) as jc:
        try:
            return run(cfg, p, jc)
        except BaseException:
            if not verbose:
                traceback.print_exc()  # into the log: the console gets the error's message
            jc.console.print(f"[red]vlac train stopped with an error[/]; its logs: {p.logs}/ "
                             "(train.log, and one per process)")
            raise


def run(cfg: TrainConfig, p: Paths, jc: JobConsole) -> dict:
    jc.console.print(describe(cfg))
    if not jc.verbose:
        jc.console.print(f"[dim]third-party logs, warnings and each process's output: "
                         f"{p.logs}/ (-v shows them here)[/]")
    t_start = time.time()
    critic, actor, v0 = prepare(cfg, p, jc)
    done_before = len(policy_episodes(p.store))
    stop = stop_event()
    jc.console.rule(f"RL: {len(cfg.tasks)} robots, {cfg.episodes} episodes "
                    f"({done_before} already done)")
    t_rl = time.time()
    launcher = Launcher(log_dir=None if jc.verbose else p.logs, env={"OMP_NUM_THREADS": "1"})
    try:
        if done_before < cfg.episodes:
            start_all(cfg, p, launcher, critic, actor, v0, done_before)
        watch(cfg, p, launcher, stop, jc, t_rl)
    finally:
        launcher.stop(stop_order(launcher))
    return report(cfg, p, critic, actor, jc.console, t_start, t_rl)

