"""Streaming partitions: one client's arrivals, their sample order and their drift.

A client's arrivals are numbered 0, 1, 2, ... (ordinals). Everything here is a pure
function of (seed, client, ...) through `derive_seed`, so queries may come in any order
and from any process. Buffers and round planning are in `fedbatch.data.stream_rounds`.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from fedbatch.config.stream import StreamConfig
from fedbatch.data.arrivals import SlotArrivals, constant_count, hash_uniform
from fedbatch.seeding import derive_seed


class ClientStream:
    """One client's stream over virtual time (seconds from 0)."""

    def __init__(
        self, cfg: StreamConfig, seed: int, client: int, labels: np.ndarray, num_classes: int
    ) -> None:
        self.cfg, self.seed, self.client = cfg, seed, client
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n, self.num_classes = len(self.labels), num_classes
        if self.n == 0:
            raise ValueError(f"client {client} has an empty partition")
        z = np.random.default_rng(derive_seed(seed, "stream-rate", client)).standard_normal()
        sigma = cfg.rate_spread
        self.rate = float(cfg.rate * math.exp(sigma * z - sigma * sigma / 2))
        self.onset = self._onset()
        slotted = cfg.name in ("poisson", "bursty")
        self._slots = SlotArrivals(cfg, self.rate, seed, client) if slotted else None
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self._label_cdf: np.ndarray | None = None

    def _onset(self) -> float:
        cfg = self.cfg
        if cfg.drift == "none" or cfg.drift_at is None:
            return math.inf
        rng = np.random.default_rng(derive_seed(self.seed, "drift-onset", self.client))
        return float(cfg.drift_at + rng.uniform(0.0, cfg.drift_stagger))

    # --- arrivals ---------------------------------------------------------------------------

    def count(self, t: float) -> int:
        """A(t): arrivals with time < t (static: the whole partition for any t ≥ 0)."""
        if self.cfg.name == "static":
            return self.n if t >= 0 else 0
        if self._slots is None:
            return constant_count(self.rate, t)
        return self._slots.count(t)

    def times(self, start: int, stop: int) -> np.ndarray:
        """Arrival times (float64) of ordinals [start, stop)."""
        return self.times_of(np.arange(start, max(start, stop), dtype=np.int64))

    def times_of(self, ordinals: np.ndarray) -> np.ndarray:
        """Arrival times of any ordinals."""
        o = np.asarray(ordinals, dtype=np.int64).reshape(-1)
        if self.cfg.name == "static":
            return np.zeros(len(o))
        if self._slots is None:
            return (o.astype(np.float64) + 1.0) / self.rate
        return self._slots.times_of(o)

    # --- samples ----------------------------------------------------------------------------

    def _perm(self, cycle: int) -> np.ndarray:
        if cycle not in self._perms:
            key = derive_seed(self.seed, "stream-order", self.client, cycle)
            self._perms[cycle] = np.random.default_rng(key).permutation(self.n)
            if len(self._perms) > 2:
                self._perms.popitem(last=False)
        return self._perms[cycle]

    def samples(self, ordinals: np.ndarray) -> np.ndarray:
        """Partition-local sample index (0..n-1) of each arrival."""
        o = np.asarray(ordinals, dtype=np.int64).reshape(-1)
        out = np.empty_like(o)
        cycles, rest = np.divmod(o, self.n)
        for cycle in np.unique(cycles):
            mask = cycles == cycle
            out[mask] = self._perm(int(cycle))[rest[mask]]
        if self.cfg.drift == "label":
            drifted = self.concepts(o) == 1
            out[drifted] = self._label_draws(o[drifted])
        return out

    def label_prior(self) -> np.ndarray:
        """The post-drift class prior q (Dirichlet draw restricted to the partition's classes)."""
        rng = np.random.default_rng(derive_seed(self.seed, "label-drift", self.client))
        q = np.nan_to_num(rng.dirichlet(np.full(self.num_classes, self.cfg.label_alpha)))
        present = np.bincount(self.labels, minlength=self.num_classes) > 0
        q = np.where(present, q, 0.0)
        return q / q.sum() if q.sum() > 0 else present / present.sum()

    def _label_draws(self, ordinals: np.ndarray) -> np.ndarray:
        """Samples drawn with weight q[label] / p[label], one hash uniform per ordinal."""
        if self._label_cdf is None:
            p = np.bincount(self.labels, minlength=self.num_classes) / self.n
            self._label_cdf = np.cumsum(self.label_prior()[self.labels] / p[self.labels])
        cdf = self._label_cdf
        u = hash_uniform(derive_seed(self.seed, "label-draw", self.client), ordinals)
        return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), self.n - 1)

    # --- drift ------------------------------------------------------------------------------

    def concept_at(self, t: float) -> float:
        """Fraction of this client's arrivals at time t that follow concept 1."""
        if t < self.onset:
            return 0.0
        mode, window = self.cfg.drift_mode, self.cfg.drift_window
        if mode == "gradual":
            return float(min(1.0, (t - self.onset) / window))
        if mode == "recurrent":
            return float(math.floor((t - self.onset) / window) % 2 == 0)
        return 1.0

    def concepts(self, ordinals: np.ndarray) -> np.ndarray:
        """int8 concept of each arrival (0 before drift, 1 after), from its arrival time."""
        o = np.asarray(ordinals, dtype=np.int64).reshape(-1)
        if math.isinf(self.onset) or len(o) == 0:
            return np.zeros(len(o), dtype=np.int8)
        after = self.times_of(o) - self.onset
        mode, window = self.cfg.drift_mode, self.cfg.drift_window
        if mode == "gradual":
            u = hash_uniform(derive_seed(self.seed, "drift", self.client), o)
            hit = u < np.clip(after / window, 0.0, 1.0)
        elif mode == "recurrent":
            hit = (after >= 0) & (np.floor(np.maximum(after, 0.0) / window) % 2 == 0)
        else:
            hit = after >= 0
        return hit.astype(np.int8)
