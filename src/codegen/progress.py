"""Progress of long work (sampling, executing, training, perplexity) that a person can see.

On a terminal it is a tqdm bar. Elsewhere (CI logs, `nohup`, a pipe) tqdm shows nothing, so
`Progress` writes a line on the `codegen.progress` logger every `interval` seconds (and at the end):
done/total, rate and ETA, plus the bar's postfix. The command line shows that logger without `-v`;
`CODEGEN_PROGRESS_INTERVAL` sets the interval (default 30 s). `note()` is a line shown either way
(e.g. the held-out loss at each evaluation).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger("codegen.progress")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool | None = None,
                 interval: float | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self.start_done = initial
        self.enabled = enabled is not False
        tty = sys.stderr is not None and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit) if self.enabled and tty else None
        if interval is None:
            interval = float(os.environ.get("CODEGEN_PROGRESS_INTERVAL", "30"))
        self.interval = interval
        self.start = self.last = time.monotonic()
        self.postfix: dict[str, str] = {}

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (time.monotonic() - self.last >= self.interval or self.done >= self.total):
            self._log()

    def set_postfix(self, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def note(self, message: str) -> None:
        """A line shown on a terminal and off it alike."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            logger.info("%s", message)

    def _log(self) -> None:
        now = time.monotonic()
        self.last = now
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        logger.info("%s: %d/%d %s, %.2f %s/s, ETA %s%s", self.desc, self.done, self.total, self.unit + "s", rate,
                    self.unit + "s", _duration(eta) if eta != float("inf") else "?", extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.last != self.start and self.done < self.total:
            self._log()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
