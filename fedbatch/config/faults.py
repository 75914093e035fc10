"""Config of faults a run can switch on: clients that crash, stall or reply with bad updates.

Each probability is per client and round (0: off, costing nothing); which clients misbehave
is drawn from the run's seed (`fedbatch.federated.faults`), the same on every engine.
"""

from __future__ import annotations

from pydantic.dataclasses import dataclass

from fedbatch.config.schema import SECTION, Float, key

# The faults, in the order the ClientApp applies them (each a probability key).
FAULTS = ("crash", "slow", "flip", "noise", "nan", "inflate")


@dataclass(frozen=True, config=SECTION)
class FaultsConfig:
    crash: Float = key(0.0, ge=0, le=1, doc="chance that a client raises instead of training")
    nan: Float = key(0.0, ge=0, le=1, doc="chance that a client's returned weights hold NaN")
    inflate: Float = key(0.0, ge=0, le=1, doc="chance that a client claims 1e15 num-examples")
    slow: Float = key(0.0, ge=0, le=1, doc="chance that a client sleeps before replying")
    slow_seconds: Float = key(1.0, ge=0, doc="seconds a slow client sleeps (real time)")
    flip: Float = key(0.0, ge=0, le=1, doc="chance that a client reverses its update")
    flip_scale: Float = key(1.0, gt=0, doc="k: a flipped client returns w_start − k·Δ")
    noise: Float = key(
        0.0, ge=0, le=1, doc="chance that a client adds Gaussian noise to its update"
    )
    noise_scale: Float = key(1.0, gt=0, doc="the noise's L2 norm as a multiple of ‖Δ‖")

    def chance(self, fault: str) -> float:
        return float(getattr(self, fault))

    @property
    def on(self) -> bool:
        return any(self.chance(fault) > 0 for fault in FAULTS)
