"""The value checks that config sections share, each raising :class:`ConfigError`."""

from __future__ import annotations

from typing import Any

from perturbsets.config.io import ConfigError
from perturbsets.core.radius import RadiusSpec


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_radius_spec(spec: float | str, name: str) -> None:
    try:
        RadiusSpec.parse(spec)
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None


def check_non_negative(schedule: Any, name: str, why: str) -> None:
    """A :class:`~perturbsets.config.learn.Schedule` whose values are all >= 0 (finite values are checked by the schedule)."""
    negative = [v for v in schedule.values if v < 0]
    require(not negative, f"{name}.values must be >= 0 ({why}), got {negative[0] if negative else None} in {schedule.values}")


def check_loop(t: Any) -> None:
    """Checks shared by the CVAE and the robust training sections."""
    check_non_negative(t.lr, "lr", "a learning rate is a step length")
    require(t.epochs >= 1, "epochs must be >= 1")
    require(t.batch_size >= 1, "batch_size must be >= 1")
    require(t.weight_decay >= 0, "weight_decay must be >= 0")
    require(t.select in ("best", "latest"), f"select must be 'best' or 'latest', got {t.select!r}")
    every = t.sample_every
    require(
        isinstance(every, int) and not isinstance(every, bool) and every >= 0,
        f"sample_every must be a whole number of epochs >= 0, got {every!r}: e.g. 10 logs a sample grid every "
        "10 epochs and after the last, 0 logs none",
    )
