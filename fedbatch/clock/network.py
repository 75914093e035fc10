"""How long a message takes over a client's link."""

from __future__ import annotations


def transfer_seconds(num_bytes: int, mbit_per_second: float, latency: float) -> float:
    """latency + 8·bytes / (Mbit/s · 10⁶): one transfer of `num_bytes` at the given bandwidth."""
    if mbit_per_second <= 0:
        raise ValueError(f"bandwidth={mbit_per_second!r} Mbit/s is invalid: allowed > 0")
    return latency + 8 * num_bytes / (mbit_per_second * 1e6)
