"""Progress that suits where it is written: a tqdm bar on a terminal, plain periodic lines elsewhere.

`progress(iterable=None, total=None, desc=None, file=sys.stderr, disable=False, **tqdm_options)` returns
- a `tqdm` bar when `file` is a terminal (`file.isatty()`), with every option passed through;
- otherwise a `Plain` bar (a log file, a pipe, CI, the service's worker logs), which has the tqdm methods
  the project uses (`update`, `close`, `set_description[_str]`, `set_postfix[_str]`, `refresh`,
  assignment to `n`, iteration) and writes one line

      {desc}: {n}/{total} ({percent}%) {postfix} [{elapsed}s]

  when the count first reaches each further tenth of `total` and at least `MIN_S` seconds have passed
  since its last line (at most 10 lines per bar; a bar that ends within `MIN_S` writes only its last),
  or, without a total, every `EVERY_S` seconds; and a last line when it reaches its total or closes,
  if the count moved since the previous line. Nothing else: redrawing a bar in a
  file writes a line per refresh (`make run > log` wrote hundreds).
`CIRCUITRY_PROGRESS=bar|plain|off` forces one kind (`off` as `disable=True`).
"""

from __future__ import annotations

import os
import sys
import time

EVERY_S = 30.0
MIN_S = 2.0
STEPS = 10  # lines per bar with a total


def progress(iterable=None, total=None, desc=None, file=None, disable: bool = False, **tqdm_options):
    """A tqdm bar on a terminal, a `Plain` one elsewhere (see the module docstring)."""
    file = sys.stderr if file is None else file
    kind = os.environ.get("CIRCUITRY_PROGRESS", "").strip().lower()
    if kind == "off":
        disable = True
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    isatty = getattr(file, "isatty", None)
    if kind == "bar" or (kind != "plain" and callable(isatty) and isatty()):
        from tqdm.auto import tqdm
        return tqdm(iterable, total=total, desc=desc, file=file, disable=disable, **tqdm_options)
    return Plain(iterable, total=total, desc=desc, file=file, disable=disable, initial=tqdm_options.get("initial", 0))


class Plain:
    """The non-terminal bar: plain lines at each tenth of the total (see the module docstring)."""

    def __init__(self, iterable=None, total=None, desc=None, file=None, disable: bool = False, initial: int = 0):
        self.iterable, self.total, self.desc, self.file, self.disable = iterable, total, desc, file, disable
        self.postfix = ""
        self._n = initial
        self.start = self.last_time = time.monotonic()
        self.printed_n = initial
        self.next_step = self._step_of(initial) + 1
        self.closed = False

    # ---------------------------------------------------------------------------------- the count
    @property
    def n(self):
        return self._n

    @n.setter
    def n(self, value) -> None:
        self._n = value
        self._maybe_line()

    def update(self, k=1) -> None:
        self.n = self._n + k

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self):
        return self.total or 0

    # ------------------------------------------------------------------------------ the decoration
    def set_description(self, desc=None, refresh: bool = True) -> None:
        self.desc = desc

    set_description_str = set_description

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def refresh(self, *args, **kwargs) -> None:
        pass

    def write(self, s: str) -> None:
        if not self.disable:
            print(s, file=self.file, flush=True)

    # ------------------------------------------------------------------------------------ the lines
    def _step_of(self, n) -> int:
        if not self.total:
            return 0
        return int(STEPS * min(max(n, 0), self.total) / self.total)

    def _maybe_line(self) -> None:
        if self.disable or self.closed:
            return
        now = time.monotonic()
        if self.total:
            step = self._step_of(self._n)
            if step >= self.next_step and (step == STEPS or now - self.last_time >= MIN_S):
                self.next_step = step + 1
                self._line(now)
        elif now - self.last_time >= EVERY_S and self._n != self.printed_n:
            self._line(now)

    def _line(self, now: float) -> None:
        count = f"{self._n:g}" if isinstance(self._n, float) else str(self._n)
        if self.total:
            count += f"/{self.total:g} ({100 * self._n / self.total:.0f}%)"
        head = f"{self.desc}: " if self.desc else ""
        tail = f" {self.postfix}" if self.postfix else ""
        print(f"{head}{count}{tail} [{now - self.start:.1f}s]", file=self.file, flush=True)
        self.printed_n, self.last_time = self._n, now

    def close(self) -> None:
        if self.closed:
            return
        if not self.disable and self._n != self.printed_n:
            self._line(time.monotonic())
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a bar left open writes nothing more
        self.closed = True
