"""`--once` on a terminal: a progress bar (files/s, ETA) with log lines above it, then a table.

Only the command line imports this, and only when both stdout and stderr are terminals: in a
pipe, a file or under systemd, `--once` logs JSON lines and nothing else.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from typing import Any, TextIO, cast

from tqdm import tqdm

BAR_FORMAT = ("{desc:<9} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{unit}  "
              "{rate_fmt}  ETA {remaining}")
OUTCOMES = ("stored", "duplicate", "quarantined", "vanished", "superseded")
QUARANTINE_HINT = "see why: python -m daemon quarantine list"


class Progress:
    """One bar per phase of `--once` (storing, recording, finishing, indexing) on `stream`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._bar: Any = None  # a tqdm bar
        self._phase = ""

    def update(self, phase: str, left: int, unit: str = "files") -> None:
        """`left` files (or other units) still wait in `phase`; the first count seen is the
        phase's total."""
        if phase != self._phase or self._bar is None:
            self.close()
            self._phase = phase
            self._bar = tqdm(total=left, desc=phase, unit=f" {unit}", file=self.stream,
                             bar_format=BAR_FORMAT, smoothing=0.1, **size())
        done = max(0, int(self._bar.total or 0) - left)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def finish(self, counts: Counter[str], elapsed_s: float) -> None:
        """Close the bar; print the summary table on stdout."""
        self.close()
        print(summary(counts, elapsed_s), flush=True)

    def logs(self, target: TextIO) -> TextIO:
        """A stream for log lines: each is printed above the bar, which is then redrawn."""
        return cast(TextIO, _AboveBar(target))


def size() -> dict[str, int]:
    """The terminal's size, 100x24 where it reports none (a new pseudo-terminal says 0x0,
    and tqdm draws nothing on a screen of no rows)."""
    columns, lines = shutil.get_terminal_size((100, 24))
    return {"ncols": columns, "nrows": lines}


class _AboveBar(io.TextIOBase):
    def __init__(self, target: TextIO) -> None:
        self.target = target

    def write(self, text: str) -> int:
        tqdm.write(text, file=self.target, end="")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()


def summary(counts: Counter[str], elapsed_s: float) -> str:
    """The table `--once` ends with on a terminal."""
    total = sum(counts.values())
    rows = [f"{'outcome':<12}{'files':>8}"]
    rows += [f"{o:<12}{counts[o]:>8}" for o in OUTCOMES if counts[o] or o in OUTCOMES[:3]]
    rows += [f"{'total':<12}{total:>8}",
             f"{elapsed_s:.1f} s, {total / elapsed_s if elapsed_s else 0:.1f} files/s"]
    if counts["quarantined"]:
        rows.append(QUARANTINE_HINT)
    return "\n".join(rows)
