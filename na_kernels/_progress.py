"""A progress bar for long loops: tqdm where it is installed, else one plain line on stderr.

Used by the model layer (``early_exit.evaluate_early_exit``) and the app (training), so it
lives below both.
"""

import sys
import time
from typing import Iterable, Optional


class _PlainProgress:
    """A minimal stand-in for tqdm: one stderr line, rewritten in place on a terminal."""

    def __init__(self, iterable, total, desc, stream):
        self.iterable, self.total, self.desc, self.stream = iterable, total, desc, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.postfix = ""
        self.n = 0
        self.t0 = time.time()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def _line(self) -> str:
        total = f"/{self.total}" if self.total else ""
        return f"{self.desc}: {self.n}{total} [{time.time() - self.t0:.1f}s] {self.postfix}".rstrip()

    def __iter__(self):
        last = 0.0
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.time()
            if self.tty and now - last > 0.2:
                self.stream.write("\r" + self._line())
                self.stream.flush()
                last = now
        self.stream.write(("\r" if self.tty else "") + self._line() + "\n")
        self.stream.flush()

    def __len__(self):
        return self.total or 0


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", enabled: bool = True):
    """Wrap ``iterable`` in a progress bar: tqdm if installed, else a plain stderr line.
    The returned object has ``set_postfix_str``. With ``enabled=False`` nothing is printed."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        return _Silent(iterable)
    try:
        from tqdm.auto import tqdm  # type: ignore
    except ImportError:
        return _PlainProgress(iterable, total, desc, sys.stderr)
    return tqdm(iterable, total=total, desc=desc, leave=True, dynamic_ncols=True, file=sys.stderr)


class _Silent:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass
