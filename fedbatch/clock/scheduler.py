"""A synchronous round in virtual time: each client's duration, who makes the deadline,
over-selection, and how many steps fit before a deadline (partial work)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedbatch.clock.devices import DeviceClass
from fedbatch.clock.network import transfer_seconds

POLICIES = ("wait_all", "deadline_drop", "deadline_partial")


@dataclass(frozen=True)
class ClientTiming:
    client: int
    download: float  # virtual seconds to receive the model
    compute: float  # virtual seconds of local steps
    upload: float  # virtual seconds to send the update
    wait: float  # virtual seconds spent waiting for streamed data (given)
    energy: float  # joules spent computing

    @property
    def total(self) -> float:
        """download + wait + compute + upload: waiting for data and computing are
        sequential here (no overlap), so the client's round time is their sum."""
        return self.download + self.wait + self.compute + self.upload


def client_timing(
    client: int,
    device: DeviceClass,
    *,
    steps: int,
    batch_size: int,
    accumulate: int,
    download_bytes: int,
    upload_bytes: int,
    wait: float = 0.0,
) -> ClientTiming:
    """A client's virtual round on `device`: `steps` optimizer steps of `accumulate`
    micro-batches of `batch_size`, the model down and the update up over its link."""
    compute = device.compute_seconds(steps, batch_size, accumulate)
    return ClientTiming(
        client=client,
        download=transfer_seconds(download_bytes, device.bandwidth_down, device.latency),
        compute=compute,
        upload=transfer_seconds(upload_bytes, device.bandwidth_up, device.latency),
        wait=wait,
        energy=device.energy_joules(compute),
    )


@dataclass(frozen=True)
class RoundSchedule:
    kept: list[int]  # clients whose updates are aggregated (in the order given)
    dropped: list[int]  # stragglers past the deadline or surplus of over-selection (order given)
    duration: float  # virtual seconds the round takes for the server


def _in_time(total: float, deadline: float) -> bool:
    """Whether a client finishing at `total` makes the deadline (a relative 1e-9 slack, so
    partial work planned to end exactly on the deadline is not lost to rounding)."""
    return total <= deadline * (1 + 1e-9)


def schedule_round(
    timings: Sequence[ClientTiming], *, policy: str, deadline: float | None, wanted: int
) -> RoundSchedule:
    """Which updates the server aggregates and how long the round lasts.

    wait_all: every client, the round lasts until the slowest finishes. deadline_drop (and
    deadline_partial, whose clients already shortened their work): clients finishing by the
    deadline; the round lasts until the deadline if anyone missed it, else until the slowest
    finishes. Over-selection, for every policy: once `wanted` updates are in, the server
    aggregates them, so the `wanted` fastest are kept (ties by client id), the rest dropped,
    and the round lasts until the `wanted`-th finish.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is invalid: allowed one of {', '.join(POLICIES)}")
    if wanted < 1:
        raise ValueError(f"wanted={wanted!r} is invalid: allowed >= 1")
    order = range(len(timings))
    if policy == "wait_all":
        on_time = list(order)
    else:
        if deadline is None or deadline <= 0:
            raise ValueError(f"deadline={deadline!r} is invalid: allowed > 0 with {policy}")
        on_time = [i for i in order if _in_time(timings[i].total, deadline)]
    if len(on_time) >= wanted:
        fastest = sorted(on_time, key=lambda i: (timings[i].total, timings[i].client))[:wanted]
        chosen, duration = set(fastest), timings[fastest[-1]].total
    elif len(on_time) < len(timings) and deadline is not None:
        chosen, duration = set(on_time), deadline  # the server waited for the missing ones
    else:
        chosen, duration = set(on_time), max((timings[i].total for i in on_time), default=0.0)
    return RoundSchedule(
        kept=[timings[i].client for i in order if i in chosen],
        dropped=[timings[i].client for i in order if i not in chosen],
        duration=duration,
    )


def partial_steps(
    device: DeviceClass,
    *,
    deadline: float,
    batch_size: int,
    accumulate: int,
    download: float,
    upload: float,
    wait: float = 0.0,
) -> int:
    """deadline_partial: how many full steps fit, ⌊(deadline − download − upload − wait) /
    (accumulate · t(B))⌋, at least 0; a client doing that many finishes by the deadline
    in `schedule_round`'s sense (same sum, same slack)."""
    per_step = accumulate * device.step_seconds(batch_size)
    budget = deadline - download - upload - wait
    steps = max(0, math.floor(budget / per_step))

    def total(n: int) -> float:
        return download + wait + device.compute_seconds(n, batch_size, accumulate) + upload

    while _in_time(total(steps + 1), deadline):
        steps += 1
    while steps > 0 and not _in_time(total(steps), deadline):
        steps -= 1
    return steps


def staleness_weight(staleness: int, exponent: float, cutoff: float | None = None) -> float:
    """How much an update computed `staleness` versions ago counts (FedBuff, FedAsync).

    Polynomial (Xie et al. 2019): (1 + τ)^−a; a = 0.5 is FedBuff's 1/√(1 + τ).
    Hinge, when `cutoff` b is given: 1 while τ <= b, then 1 / (a(τ − b) + 1).
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if cutoff is None:
        return (1.0 + staleness) ** -exponent
    return 1.0 if staleness <= cutoff else 1.0 / (exponent * (staleness - cutoff) + 1.0)
