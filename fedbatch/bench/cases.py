"""Benchmark cases: one federated workload each, as a fedbatch config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedbatch.config import RunConfig, build_config
from fedbatch.config.compose import compose_config


@dataclass(frozen=True)
class BenchCase:
    name: str
    description: str
    raw: dict[str, Any]
    runners: tuple[str, ...] = ("plain", "inprocess", "ray", "flower", "pfl")
    registered: tuple[int, ...] = field(default=())  # scale case: registered client counts
    per_round: tuple[int, ...] = field(default=())  # scale case: clients per round
    # Runner variants: name → (runner, config sections replaced for that runner).
    variants: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # Whole-process case: `python -m fedbatch.simulate` overrides of the run (raw unused).
    argv: tuple[str, ...] = ()

    def config(self, **top: Any) -> RunConfig:
        if self.argv:
            return compose_config([*self.argv, "progress=off"])
        return build_config(self.raw | {"progress": "off"} | top)

    def runner_config(self, runner: str) -> tuple[str, RunConfig]:
        """The runner to start and its config, for a plain runner name or a variant."""
        base, sections = self.variants.get(runner, (runner, {}))
        return base, self.config(**sections)


# The same work as the plain loop, which measures nothing per step.
_PROBES_OFF = {"grad_norm": 0}
_EQUAL_WORK = {"probes-off": ("inprocess", {"monitor": _PROBES_OFF})}

SMALL = BenchCase(
    name="small",
    description="10 clients × 5 rounds × 20 steps, B=32, MLP 60-256-256-10 (84k params)",
    raw={
        "seed": 0,
        "rounds": 5,
        "num_clients": 10,
        "clients_per_round": 10,
        "data": {"name": "synthetic", "num_samples": 6000, "alpha": 0.0, "beta": 0.0},
        "model": {"name": "mlp", "hidden": [256, 256]},
        "client": {"batch_size": 32, "steps": 20, "optimizer": "sgd", "lr": 0.05},
        "strategy": {"name": "fedavg"},
        # Evaluate the final model only, as every runner does.
        "eval": {"every": 1000, "initial": False},
    },
    runners=("plain", "inprocess", "probes-off", "vectorized", "ray", "flower", "pfl"),
    variants=_EQUAL_WORK,
)

TINY = BenchCase(
    name="tiny",
    description="10 clients × 5 rounds × 1 epoch (20 steps), B=32, momentum SGD, "
    "MLP 40-128-128-10 (23k params) on MNIST-1D: steps of well under a millisecond",
    raw={
        "seed": 0,
        "rounds": 5,
        "num_clients": 10,
        "clients_per_round": 10,
        # 8,000 samples, 20% held out: 640 per client, 20 steps of B=32 per epoch.
        "data": {"name": "mnist1d", "num_samples": 8000},
        "model": {"name": "mlp", "hidden": [128, 128]},
        "client": {
            "batch_size": 32,
            "epochs": 1,
            "optimizer": "momentum",
            "momentum": 0.9,
            "lr": 0.05,
        },
        "strategy": {"name": "fedavg"},
        "eval": {"every": 1000, "initial": False},
    },
    runners=("plain", "inprocess", "probes-off", "vectorized", "pfl"),
    variants=_EQUAL_WORK,
)

STREAM = BenchCase(
    name="stream",
    description="the tiny case's clients and model on streams: 64 Poisson arrivals a "
    "virtual second, 10 s rounds, each arrival trained once (about 20 steps of B=32)",
    raw=TINY.raw
    | {"stream": {"name": "poisson", "rate": 64.0, "round_seconds": 10.0, "passes": 1}},
    runners=("inprocess", "vectorized"),
)

PFL = BenchCase(
    name="pfl",
    description="pfl-research style: 1,000 clients × 50 images (3×32×32), 50 per round, "
    "B=10, E=1, 10 rounds, CNN 16-32",
    raw={
        "seed": 0,
        "rounds": 10,
        "num_clients": 1000,
        "clients_per_round": 50,
        # 55,000 images with a 1/11 test split: 50,000 for training, 50 per client.
        "data": {"name": "images", "num_samples": 55_000, "test_fraction": 1 / 11},
        "model": {"name": "cnn", "channels": [16, 32], "kernel_size": 5},
        "client": {"batch_size": 10, "epochs": 1, "optimizer": "sgd", "lr": 0.05},
        "strategy": {"name": "fedavg"},
        "eval": {"every": 1000, "initial": False},
    },
    runners=("plain", "inprocess", "probes-off", "vectorized", "ray", "flower", "pfl"),
    variants=_EQUAL_WORK,
)

PFL_SHORT = BenchCase(
    name="pfl-short",
    description="the pfl case's clients, model and B, 3 rounds of 200 registered clients: "
    "its CNN steps in a third of the time",
    raw=PFL.raw | {"rounds": 3, "num_clients": 200,
                   "data": PFL.raw["data"] | {"num_samples": 11_000}},
    runners=("plain", "inprocess", "probes-off", "vectorized"),
    variants=_EQUAL_WORK,
)  # fmt: skip

SCALE = BenchCase(
    name="scale",
    description="100 or 1,000 of 10⁴, 10⁵ or 10⁶ registered clients per round (one "
    "training sample each), FedAvg and FedBuff, 3 rounds, 2 steps each",
    raw={
        "seed": 0,
        "rounds": 3,
        "num_clients": 100,
        "clients_per_round": 100,
        "data": {  # num_samples: fedbatch.bench.scale sets it from the registered count
            "name": "synthetic",
            "num_samples": 200_000,
            "num_features": 20,
            "alpha": 0.0,
            "beta": 0.0,
        },
        "model": {"name": "logreg"},
        "client": {"batch_size": 10, "steps": 2, "optimizer": "sgd", "lr": 0.05},
        "strategy": {"name": "fedavg"},
        "eval": {"every": 1000, "initial": False},
    },
    runners=("inprocess",),
    registered=(10_000, 100_000, 1_000_000),
    per_round=(100, 1_000),
)

_PROBES_ON = {"grad_norm": 1, "layer_norms": True, "noise_scale": 1, "updates": 1}
PROBES = BenchCase(
    name="probes",
    description="the small case with the per-step gradient norm (default), with every "
    "probe off, and with the per-round probes on: what monitoring costs",
    raw=SMALL.raw,
    runners=("plain", "inprocess", "probes-off", "probes-on"),
    variants=_EQUAL_WORK | {"probes-on": ("inprocess", {"monitor": _PROBES_ON})},
)

STARTUP = BenchCase(
    name="startup",
    description="whole processes, start to exit: the default experiment, 1 round "
    "(`python -m fedbatch.simulate rounds=1`) against the plain loop's process",
    raw={},
    runners=("plain", "simulate"),
    argv=("rounds=1",),
)

DEPLOYMENT = BenchCase(
    name="deployment",
    description="`deploy local --nodes 2`, 4 rounds, with the node worker and without: "
    "a steady-state round split into Flower's polling, process start-up, data and "
    "training, against an in-process round",
    raw={},
    runners=("deployment",),
    argv=("rounds=4",),  # `--nodes 2` sets num_clients=clients_per_round=2
)

CASES = {
    case.name: case
    for case in (SMALL, TINY, STREAM, PFL, PFL_SHORT, SCALE, PROBES, STARTUP, DEPLOYMENT)
}
