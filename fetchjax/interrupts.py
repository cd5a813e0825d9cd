"""Ctrl-C (SIGINT) and SIGTERM for long runs: the first one asks for a clean stop at the next safe point, a second
one stops at once; nothing that writes a checkpoint or meta.json is ever cut in half.

    with StopRequests(on_first=lambda: print("stopping after this chunk")) as stop:
      while ...:
        step()
        if stop.requested: break
        with stop.critical():           # signals wait until the block is done
          save()

A KeyboardInterrupt raised by a second signal can land anywhere outside `critical()`; callers handle it like a
stop request that could not wait. In a thread other than the main one, no handler can be installed: signals then
keep Python's default behaviour.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
  def __init__(self, on_first: Callable[[], None] | None = None):
    self.on_first = on_first
    self.count = 0
    self._depth = 0
    self._pending = False
    self._previous: dict = {}

  @property
  def requested(self) -> bool:
    return self.count > 0

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():
      for sig in _SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    self.count += 1
    if self.count == 1:
      if self.on_first:
        self.on_first()
      return
    if self._depth:
      self._pending = True
      return
    raise KeyboardInterrupt

  @contextlib.contextmanager
  def critical(self):
    """Defers every signal until the block has finished (a second one then raises KeyboardInterrupt)."""
    self._depth += 1
    try:
      yield
    finally:
      self._depth -= 1
    if not self._depth and self._pending:
      self._pending = False
      raise KeyboardInterrupt
