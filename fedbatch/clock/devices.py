"""Device classes: time and memory of a local step as a function of the batch size B.

t(B) = step_overhead + x(B) / throughput, x(B) = max(B, S) where S = `saturation`: a fixed
cost per step, then time proportional to B once the device is saturated. Below S a
device is under-used: with `scaling` α = 0 a step costs as much as B = S; with α > 0 it
costs S·(B/S)^α samples' worth, so throughput B / t rises with B up to its maximum at S
(α = 1: linear all the way). m(B) = memory_base + B · memory_per_sample, under `memory_cap`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import overload

import numpy as np
from pydantic.dataclasses import dataclass

from fedbatch.config.schema import SECTION, Float, Int, Str, key
from fedbatch.seeding import derive_seed

# Bounds past which a device's times mean nothing (a throughput of 1e-300 samples/s made
# rounds of 1e302 virtual seconds): rates of at least 0.001 a second, delays of at most a day.
SLOWEST = 1e-3
DAY = 86400.0


@dataclass(frozen=True, config=SECTION)
class DeviceClass:
    name: Str = key("device", doc="the class's name (unnamed in a list: device<i>)")
    share: Float = key(1.0, gt=0, doc="fraction of clients of this class (normalised)")
    step_overhead: Float = key(0.002, ge=0, le=DAY, doc="t0: seconds per step whatever B")
    throughput: Float = key(20000.0, ge=SLOWEST, doc="samples per second once saturated")
    saturation: Int = key(64, ge=1, doc="B from which throughput is reached")
    memory_base: Float = key(50.0, ge=0, doc="MB: model, gradients, optimizer state, runtime")
    memory_per_sample: Float = key(0.05, ge=0, doc="MB of activations per sample in the batch")
    memory_cap: Float = key(4096.0, gt=0, doc="MB available for training")
    power: Float = key(10.0, ge=0, doc="watts while computing")
    bandwidth_down: Float = key(50.0, ge=SLOWEST, doc="Mbit/s")
    bandwidth_up: Float = key(10.0, ge=SLOWEST, doc="Mbit/s")
    latency: Float = key(0.05, ge=0, le=DAY, doc="seconds per transfer")
    scaling: Float = key(0.0, ge=0, le=1, doc="α: below saturation a step costs S·(B/S)^α samples")

    def step_seconds(self, batch_size: int) -> float:
        """t(B) = step_overhead + x(B) / throughput (see the module docstring)."""
        return (
            self.step_overhead + _work(batch_size, self.saturation, self.scaling) / self.throughput
        )

    def memory_mb(self, batch_size: int) -> float:
        """Peak memory of a step: memory_base + B · memory_per_sample."""
        return self.memory_base + batch_size * self.memory_per_sample

    def largest_batch(self) -> int:
        """The largest B whose memory fits the cap: 0 if even B = 1 does not fit,
        `sys.maxsize` when memory does not grow with B and the base fits."""
        if self.memory_mb(1) > self.memory_cap:
            return 0
        if self.memory_per_sample <= 0:
            return sys.maxsize
        b = max(1, math.floor((self.memory_cap - self.memory_base) / self.memory_per_sample))
        while self.memory_mb(b + 1) <= self.memory_cap:  # correct the division's rounding
            b += 1
        while b > 1 and self.memory_mb(b) > self.memory_cap:
            b -= 1
        return b

    def compute_seconds(self, steps: int, batch_size: int, accumulate: int = 1) -> float:
        """steps · accumulate · t(B): each of the `accumulate` micro-batches of B is a pass."""
        return steps * accumulate * self.step_seconds(batch_size)

    def energy_joules(self, compute_seconds: float) -> float:
        """power · compute seconds (idle and transfer time draw nothing in this model)."""
        return self.power * compute_seconds


def _work(batch_size: float | np.ndarray, saturation: int, scaling: float) -> np.ndarray:
    """x(B): samples' worth of device time of a step of B (see the module docstring)."""
    b = np.asarray(batch_size, dtype=float)
    below = saturation * (np.minimum(b, saturation) / saturation) ** scaling
    return np.where(b >= saturation, b, below)


def _counts(shares: Sequence[float], total: int) -> list[int]:
    """Largest-remainder apportionment of `total` by `shares` (ties: lower class index)."""
    exact = [Fraction(s).limit_denominator(10**12) for s in shares]
    whole = sum(exact)
    quotas = [s / whole * total for s in exact]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def assign_devices(classes: Sequence[DeviceClass], num_clients: int, seed: int) -> list[int]:
    """The class index of each client: exact counts by share (largest remainder), then a
    shuffle seeded by derive_seed(seed, "devices")."""
    return [int(i) for i in _class_indices(classes, num_clients, seed)]


def _class_indices(classes: Sequence[DeviceClass], num_clients: int, seed: int) -> np.ndarray:
    """`assign_devices` as one numpy array (no Python int per client)."""
    shares = [c.share for c in classes]  # each > 0 (the schema's range)
    if not classes:
        raise ValueError("device classes=[] is invalid: allowed at least one class")
    if num_clients < 0:
        raise ValueError(f"num_clients={num_clients!r} is invalid: allowed >= 0")
    counts = _counts(shares, num_clients)
    index = np.repeat(np.arange(len(classes)), counts)
    rng = np.random.default_rng(derive_seed(seed, "devices"))
    return rng.permutation(index)


class ClientDevices(Sequence[DeviceClass]):
    """Each client's device: its class (`assign_devices`) spread around it
    (`spread_device`), drawn the first time it is asked for. The same devices as drawing
    them all up front, without a million objects and draws for a million clients."""

    def __init__(
        self, classes: Sequence[DeviceClass], num_clients: int, spread: float, seed: int
    ) -> None:
        self.classes, self.spread, self.seed = classes, spread, seed
        self.class_of = _class_indices(classes, num_clients, seed)
        self._drawn: dict[int, DeviceClass] = {}
        self._mean_throughput: float | None = None

    def _draw(self, client: int) -> DeviceClass:
        device = self.classes[int(self.class_of[client])]
        return spread_device(device, self.spread, self.seed, client)

    @overload
    def __getitem__(self, client: int) -> DeviceClass: ...
    @overload
    def __getitem__(self, client: slice) -> list[DeviceClass]: ...
    def __getitem__(self, client: int | slice) -> DeviceClass | list[DeviceClass]:
        if isinstance(client, slice):
            return [self[c] for c in range(len(self))[client]]
        client = range(len(self))[client]  # negative indices, and IndexError past the end
        device = self._drawn.get(client)
        if device is None:
            device = self._drawn[client] = self._draw(client)
        return device

    def __len__(self) -> int:
        return len(self.class_of)

    def mean_throughput(self) -> float:
        """The mean throughput over every client's device (summed in client order; the
        devices are drawn for it, not kept)."""
        if self._mean_throughput is None:
            total = sum(self._draw(c).throughput for c in range(len(self)))
            self._mean_throughput = total / len(self)
        return self._mean_throughput


def _line(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(t0, slope) minimising the squared relative residuals Σ((t0 + slope·x − t) / t)²,
    with t0 >= 0 (the fit through the origin when the free fit's t0 is negative or x is
    constant)."""
    a = np.stack([1 / t, x / t], axis=1)
    if np.ptp(x) > 0:
        (t0, slope), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
        if t0 >= 0 and slope > 0:
            return float(t0), float(slope)
    r = x / t
    return 0.0, float(r.sum() / (r * r).sum())


def _memory_line(b: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """(base, per_sample) by least squares, both >= 0 (a flat line when B is constant or
    memory falls with B; a line through the origin when the free fit's base is negative)."""
    if np.ptp(b) > 0:
        per_sample, base = np.polyfit(b, m, 1)
        if per_sample >= 0:
            if base >= 0:
                return float(base), float(per_sample)
            return 0.0, float(max((b * m).sum() / (b * b).sum(), 0.0))
    return float(max(m.mean(), 0.0)), 0.0


def fit_device(
    batch_sizes: Sequence[int],
    seconds: Sequence[float],
    memory_mb: Sequence[float] | None = None,
    *,
    name: str = "measured",
) -> DeviceClass:
    """A DeviceClass whose t(B) fits measured step times (and m(B) measured memory).

    Each measured B is tried as the saturation S and each α in 0, 0.05, …, 1 as the
    scaling: t = t0 + x(B) / throughput by least squares in relative terms (t0 >= 0,
    throughput > 0); the (S, α) with the smallest mean squared relative error is kept
    (ties: the smaller S, then α). Memory, when given, is a least-squares line (base and
    per-sample cost >= 0). Other fields keep their defaults.
    """
    b = np.asarray(batch_sizes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if b.ndim != 1 or len(b) == 0 or b.shape != t.shape:
        raise ValueError("fit_device needs as many step times as batch sizes (at least one)")
    if b.min() < 1 or t.min() <= 0:
        raise ValueError("fit_device needs batch sizes >= 1 and step times > 0")
    best: tuple[float, int, float, float, float] | None = None
    for s in sorted({int(v) for v in batch_sizes}):
        for alpha in np.linspace(0.0, 1.0, 21):
            x = _work(b, s, float(alpha))
            t0, slope = _line(x, t)
            error = float(np.mean(((t0 + slope * x - t) / t) ** 2))
            if best is None or error < best[0] - 1e-15:
                best = (error, s, float(alpha), t0, slope)
    assert best is not None
    _, saturation, scaling, t0, slope = best
    fields: dict[str, float] = {}
    if memory_mb is not None:
        m = np.asarray(memory_mb, dtype=float)
        if m.shape != b.shape:
            raise ValueError("fit_device needs as many memory values as batch sizes")
        fields["memory_base"], fields["memory_per_sample"] = _memory_line(b, m)
    return DeviceClass(
        name=name,
        step_overhead=t0,
        throughput=1 / slope,
        saturation=saturation,
        scaling=scaling,
        **fields,  # type: ignore[arg-type]
    )


def relative_errors(
    device: DeviceClass, batch_sizes: Sequence[int], seconds: Sequence[float]
) -> list[float]:
    """|t(B) − measured| / measured for each point."""
    return [abs(device.step_seconds(b) - s) / s for b, s in zip(batch_sizes, seconds, strict=True)]


def spread_device(device: DeviceClass, sigma: float, seed: int, client: int) -> DeviceClass:
    """One client's device around its class: throughput and bandwidths each multiplied by
    a log-normal factor exp(σz − σ²/2) (mean 1), seeded per client."""
    if sigma <= 0:
        return device
    rng = np.random.default_rng(derive_seed(seed, "device-spread", client))
    compute, network = np.exp(sigma * rng.standard_normal(2) - sigma * sigma / 2)
    return dataclasses.replace(
        device,
        throughput=device.throughput * float(compute),
        bandwidth_down=device.bandwidth_down * float(network),
        bandwidth_up=device.bandwidth_up * float(network),
    )
