"""Progress you can see: the ``progress`` setting, training step lines, the grid's ETA.

``train.progress`` is ``auto`` | ``on`` | ``off``; YAML reads an unquoted ``on``/``off``
(and ``--set train.progress=on``) as the booleans ``true``/``false``, which mean the same.
On a terminal, training shows a tqdm bar; elsewhere (a notebook, a log file) ``auto``
writes one line every :func:`log_every` steps with images per second and the ETA of
the epoch. The grid logs one line per finished stage with its elapsed time and ETA.
The ETA is the linear extrapolation ``t_left = t_elapsed * (n_total - n_done) / n_done``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from imbalens.training.distributed import DistInfo

log = logging.getLogger(__name__)

#: the accepted spellings of ``train.progress`` (after YAML: booleans too)
PROGRESS_VALUES: dict[Any, str] = {
    "auto": "auto",
    "on": "on",
    "off": "off",
    True: "on",
    False: "off",
}


def parse_progress(value: Any, key: str = "train.progress") -> str:
    """``auto`` | ``on`` | ``off`` from a config value (``true``/``false`` accepted).

    Raises:
        imbalens.config.ConfigError: any other value, naming ``key`` and the choices.
    """
    from imbalens.config import ConfigError

    norm = value.strip().lower() if isinstance(value, str) else value
    if isinstance(norm, bool) or norm in ("auto", "on", "off"):
        return PROGRESS_VALUES[norm]
    raise ConfigError(
        f"{key} must be auto, on or off (YAML true/false mean on/off), got {value!r}; "
        f"e.g. --set {key}=auto"
    )


def progress_enabled(setting: str, info: DistInfo) -> bool:
    """Progress bars: ``on``/``off``, or ``auto`` = only on rank 0 with a terminal."""
    if not info.is_main or setting == "off":
        return False
    return setting == "on" or sys.stderr.isatty()


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``3725`` -> ``1h02m``; ``?`` for NaN or infinity."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta(elapsed: float, done: int, total: int) -> float:
    """Seconds left by linear extrapolation: ``elapsed * (total - done) / done``."""
    if done <= 0:
        return math.inf
    return elapsed * max(0, total - done) / done


def log_every(total: int, lines: int = 5) -> int:
    """Steps between two lines: about ``lines`` lines per epoch, at least every step."""
    return max(1, math.ceil(total / lines))


class StepLines:
    """A tqdm-like object that writes a line every ``every`` steps (and at the end).

    Each line: ``epoch 2: step 20/40 (50%), 85.1 img/s, loss 0.4123, ETA 12s``.
    """

    def __init__(
        self,
        total: int,
        initial: int,
        desc: str,
        batch_size: int,
        every: int | None = None,
        stream: TextIO | None = None,
        clock: Any = time.perf_counter,
    ) -> None:
        self.total, self.n, self.start_n, self.desc = total, initial, initial, desc
        self.batch_size = batch_size
        self.every = every or log_every(total)
        self.stream = stream
        self.clock = clock
        self.t0 = clock()
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def line(self) -> str:
        """The current progress line (without newline)."""
        elapsed = self.clock() - self.t0
        steps = self.n - self.start_n
        rate = steps * self.batch_size / elapsed if elapsed > 0 else math.nan
        pct = 100 * self.n / self.total if self.total else 100.0
        left = eta(elapsed, steps, self.total - self.start_n)
        parts = [f"{self.desc}: step {self.n}/{self.total} ({pct:.0f}%)", f"{rate:.1f} img/s"]
        if self.postfix:
            parts.append(self.postfix)
        parts.append(f"ETA {format_seconds(left)}")
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n >= self.total:
            stream = self.stream or sys.stderr
            stream.write(self.line() + "\n")
            stream.flush()

    def close(self) -> None:
        pass


class _Silent:
    def set_postfix(self, **values: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def step_progress(
    setting: Any, total: int, initial: int, desc: str, batch_size: int, is_main: bool = True
) -> Any:
    """The training loop's progress object (``update``, ``set_postfix``, ``close``).

    ``off`` (or a non-main DDP rank): silent; ``on``, or ``auto`` on a terminal: a tqdm
    bar; ``auto`` elsewhere: :class:`StepLines`.
    """
    mode = parse_progress(setting)
    if mode == "off" or not is_main:
        return _Silent()
    if mode == "on" or sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False)
    return StepLines(total, initial, desc, batch_size)


class GridProgress:
    """The grid's stages: a tqdm bar on a terminal, and one log line per update with ETA."""

    def __init__(self, total: int, enabled: bool | None = None, clock: Any = time.perf_counter):
        from tqdm import tqdm

        disable = (not sys.stderr.isatty()) if enabled is None else not enabled
        self.bar = tqdm(total=total, desc="stages", unit="stage", disable=disable)
        self.total, self.done, self.clock, self.t0 = total, 0, clock, clock()

    def line(self) -> str:
        """``grid: 5/64 stages, 2m10s elapsed, ETA 25m35s``."""
        elapsed = self.clock() - self.t0
        left = eta(elapsed, self.done, self.total)
        return (
            f"grid: {self.done}/{self.total} stages, {format_seconds(elapsed)} elapsed, "
            f"ETA {format_seconds(left)}"
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        log.info("%s", self.line())

    def close(self) -> None:
        self.bar.close()
