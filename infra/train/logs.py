"""`vlac train`'s quiet console: its own lines and the live status on the console, the rest
in ``WORKDIR/logs/``.

Quiet (the default): ``logs/train.log`` gets every log record at INFO and up, Python
warnings, and whatever this process or its libraries print (file descriptors 1 and 2, so C
extensions too: onnx_ir, the ONNX Runtime quantizer, DeepSpeed, tqdm bars, ...); each child
process writes its own ``logs/<name>.log`` (``launch.Launcher``). The console shows the
job's lines, ``vlac.infra`` log records at INFO and up, other ``vlac`` records at WARNING and
up, anyone's errors, and where the logs are when the job stops with an error. Verbose
(``vlac -v train``: the root logger at DEBUG): everything on the console as well, and the
children print there too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console

from vlac.infra.cli import LOG_FORMAT, LevelsByLogger

# what the quiet console shows of the log records: logger-name prefix -> lowest level
CONSOLE_LEVELS = {"vlac.infra": logging.INFO, "vlac": logging.WARNING}


@dataclass
class JobConsole:
    console: Console
    log: Path  # this process's log file
    verbose: bool

    @contextmanager
    def phase(self, title: str) -> Iterator[None]:
        """A step of the job: its title, a spinner while it runs (quiet, on a terminal), and
        how long it took."""
        self.console.rule(title)
        t0 = time.monotonic()
        with nullcontext() if self.verbose else self.console.status(f"{title} ..."):
            yield
        self.console.print(f"[dim]done in {time.monotonic() - t0:.0f}s[/]")


class _ToConsole(logging.Handler):
    """Log records as console lines (above the live status while it shows)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False)
        except Exception:
            self.handleError(record)


@contextmanager
def job_console(log_dir: Path, verbose: bool, width: int = 120) -> Iterator[JobConsole]:
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "train.log"
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    with open(path, "a", buffering=1, encoding="utf-8", errors="replace") as log_file:
        log_file.write(f"---- vlac train started {time.strftime('%Y-%m-%d %H:%M:%S')} "
                       f"(pid {os.getpid()})\n")
        to_file = logging.StreamHandler(log_file)
        to_file.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        try:
            if verbose:  # the CLI's console handler stays; the file gets the records too
                root.addHandler(to_file)
                yield JobConsole(Console(width=width), path, True)
                return
            with _fds_to(log_file) as screen:
                console = Console(file=screen, width=width)
                shown = _ToConsole(console)
                shown.addFilter(LevelsByLogger(CONSOLE_LEVELS, others=logging.ERROR))
                root.handlers = [to_file, shown]
                root.setLevel(logging.INFO)
                logging.captureWarnings(True)
                try:
                    yield JobConsole(console, path, False)
                finally:
                    logging.captureWarnings(False)
        finally:
            root.handlers = saved_handlers
            root.setLevel(saved_level)


@contextmanager
def _fds_to(log_file: TextIO) -> Iterator[TextIO]:
    """Points file descriptors 1 and 2, and sys.stdout and sys.stderr, at ``log_file``;
    yields a stream on the original stdout (the console)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    screen = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
    streams = sys.stdout, sys.stderr
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    sys.stdout = sys.stderr = log_file
    try:
        yield screen
    finally:
        log_file.flush()
        screen.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        screen.close()
