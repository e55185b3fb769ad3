"""Stopping a process cleanly on Ctrl-C and SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGINT or SIGTERM (signals can only be set from the main thread; in
    any other, e.g. a test running the process's main in a thread, nothing is set)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop())


def stop_event() -> threading.Event:
    """An event that Ctrl-C and SIGTERM set."""
    event = threading.Event()
    on_stop_signals(event.set)
    return event
