"""A task's training settings as a device checks them: a coordinator (or whoever speaks
for it) is not trusted to send sane ones. An out-of-range value — ``lr: NaN``,
``epochs: 1e308``, ``batch_size: -7``, a round that is not an integer — is refused before
any work, and the device declines the task naming the key."""

from __future__ import annotations

import math
from typing import Any

from tsfl.sdk.privacy_guard import TaskRefused

#: key -> (integer?, lowest, highest) for the settings a task may carry
BOUNDS: dict[str, tuple[bool, float, float]] = {
    "round": (True, 0, 2**53),
    "seed": (True, 0, 2**64 - 1),
    "lr": (False, 0.0, 1e3),
    "epochs": (True, 1, 10_000),
    "batch_size": (True, 1, 1 << 24),
    "proximal_mu": (False, 0.0, 1e6),
}


def check_task_settings(config: dict[str, Any]) -> None:
    """Raise :class:`TaskRefused` (``invalid``) for the first out-of-range setting."""
    for key, (integer, low, high) in BOUNDS.items():
        if key not in config:
            continue
        value = config[key]
        ok = (isinstance(value, int) if integer else isinstance(value, int | float)) and (
            not isinstance(value, bool))
        if ok and not integer:
            ok = math.isfinite(value) and (value > low if key == "lr" else value >= low)
        if not ok or not low <= value <= high:
            raise TaskRefused("invalid", f"task setting {key}={str(value)[:32]!r} is not "
                                         f"{'an integer' if integer else 'a number'} in "
                                         f"{low:g}..{high:g}")
