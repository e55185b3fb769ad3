"""One way to run the parts of a local job as processes (`vlac train` and `vlac stack`).

Every part is its own spawned process, started by name from a ``module:function`` target and
its config, as it would run on another machine. With a log folder each process writes
everything (its log records at ``level``, Python warnings, whatever it or its libraries
print, C extensions included) to ``LOG_DIR/<name>.log``; without one it prints to the
parent's console. Stopping goes in the order given (robots first, so they finish their step
and flush their spools), each with SIGTERM, then SIGKILL after ``timeout``.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# a child is never part of the parent's torch.distributed group (the parent may have trained
# in-process, and its rendezvous port may still be bound): each sets up its own
_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@dataclass
class Launcher:
    log_dir: Path | None = None  # None: children print to the parent's console
    env: dict[str, str] = field(default_factory=dict)  # set in each child unless already set
    procs: dict[str, mp.process.BaseProcess] = field(default_factory=dict)

    def start(self, name: str, target: str, cfg: object, *, level: int = logging.WARNING,
              ignore_warnings: bool = False) -> mp.process.BaseProcess:
        """Runs ``target`` (``"package.module:function"``) with ``cfg`` in a new process."""
        log = str(self.log_path(name)) if self.log_dir is not None else None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = mp.get_context("spawn").Process(
            target=_child, args=(name, target, cfg, log, level, ignore_warnings, self.env),
            name=name)
        proc.start()
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].is_alive()

    def failed(self, names: list[str] | None = None) -> list[str]:
        """Those of ``names`` (default: all) that exited with an error."""
        return [n for n in (self.procs if names is None else names)
                if n in self.procs and self.procs[n].exitcode not in (None, 0)]

    def where(self, names: list[str], lines: int = 15) -> str:
        """Where to read what ``names`` printed: their logs' last lines, or 'above'."""
        if self.log_dir is None:
            return "see their output above"
        parts = []
        for name in names:
            path = self.log_path(name)
            text = path.read_text(errors="replace") if path and path.exists() else ""
            tail = "\n".join("    " + line for line in text.splitlines()[-lines:])
            parts.append(f"the end of {path}:\n{tail}")
        return "\n".join(parts)

    def stop(self, order: list[str], timeout: float = 60.0) -> None:
        """SIGTERM each of ``order`` that still runs (then the rest), in turn; SIGKILL after
        ``timeout`` seconds."""
        for name in order + [n for n in self.procs if n not in order]:
            proc = self.procs.get(name)
            if proc is not None and proc.is_alive():
                proc.terminate()
                proc.join(timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)


def _child(name: str, target: str, cfg: object, log: str | None, level: int,
           ignore_warnings: bool, env: dict[str, str]) -> None:
    if log is not None:  # everything this process writes, C extensions included
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        print(f"---- {name} started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})",
              flush=True)
        logging.captureWarnings(True)
    logging.basicConfig(level=level, format=_FORMAT, datefmt="%H:%M:%S")
    if ignore_warnings:
        warnings.filterwarnings("ignore")
    for key, value in env.items():
        os.environ.setdefault(key, value)
    for var in _DIST_VARS:
        os.environ.pop(var, None)
    module, _, function = target.partition(":")
    getattr(importlib.import_module(module), function)(cfg)
