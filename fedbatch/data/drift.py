"""Input and label transforms of covariate and concept drift (pure torch functions).

Rows whose concept is 1 are transformed; the others are returned as they are. Every
random piece (noise vector, rotation, label permutation) is fixed per run seed.
"""

from __future__ import annotations

import numpy as np
import torch

from fedbatch.config.stream import StreamConfig
from fedbatch.seeding import derive_seed


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn permutation of range(n) without fixed points (n ≥ 2)."""
    if n < 2:
        raise ValueError(f"concept drift needs at least 2 classes, got {n}")
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def random_rotation(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed orthogonal n×n float64 matrix (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    signs = torch.sign(torch.diagonal(r))
    return q * torch.where(signs == 0, 1.0, signs)


class DriftTransform:
    """The drift of `cfg` (covariate or concept; label and none are the identity)."""

    def __init__(self, cfg: StreamConfig, seed: int, num_features: int, num_classes: int) -> None:
        self.kind, self.shift = cfg.drift, cfg.covariate
        self.strength, self.num_features = float(cfg.drift_strength), num_features
        self.offset: torch.Tensor | None = None
        self.rotation: torch.Tensor | None = None
        self.perm: torch.Tensor | None = None
        self._placed: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        generator = torch.Generator().manual_seed(derive_seed(seed, "covariate"))
        if self.kind == "covariate" and self.shift == "noise":
            self.offset = torch.randn(num_features, generator=generator)
        elif self.kind == "covariate" and self.shift == "rotation":
            self.rotation = random_rotation(num_features, generator)
        elif self.kind == "concept":
            rng = np.random.default_rng(derive_seed(seed, "concept-drift"))
            self.perm = torch.from_numpy(derangement(num_classes, rng))

    @property
    def identity(self) -> bool:
        return self.kind not in ("covariate", "concept")

    def apply(
        self, x: torch.Tensor, y: torch.Tensor, concept: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) with concept-1 rows drifted; inputs are never modified in place.

        With nothing to change (identity drift, no concept-1 row) the inputs are returned.
        """
        mask = concept.to(device=x.device).reshape(-1).bool()
        if self.identity or not bool(mask.any()):
            return x, y
        if self.kind == "concept":
            assert self.perm is not None
            return x, torch.where(mask.to(y.device), self.perm.to(y.device)[y], y)
        flat = x.reshape(len(x), -1)
        if flat.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features, got {flat.shape[1]}")
        if not flat.is_floating_point():
            flat = flat.to(torch.get_default_dtype())
        out = flat.clone()
        out[mask] = self._shift(flat[mask])
        return out.reshape(x.shape), y

    def _on(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The fixed tensor `name` on `like`'s device and dtype (moved once, then cached)."""
        key = (name, like.device, like.dtype)
        if key not in self._placed:
            self._placed[key] = getattr(self, name).to(like.device, like.dtype)
        return self._placed[key]

    def _shift(self, rows: torch.Tensor) -> torch.Tensor:
        if self.shift == "scale":
            return rows * self.strength
        if self.shift == "noise":
            return rows + self.strength * self._on("offset", rows)
        mix = min(self.strength, 1.0)
        return (1 - mix) * rows + mix * (rows @ self._on("rotation", rows))
