"""`python -m fedbatch.calibrate [--batch-sizes 1,2,...] [--variants ...] [--budget-mb M]
[--out DIR] [Hydra overrides]`: measure what a training step of the configured model costs
at each batch size B, on this machine's CPU (and CUDA with `device=cuda`).

For each variant (fp32; bf16 autocast; activation checkpointing; both) it prints step time
(the fastest of `--repeats` steps),
samples per second and memory (weights + gradients + optimizer state + activations saved
for backward), the largest B within `--budget-mb`, and writes `calibration.json`. It fits
the virtual clock's device model to the fp32 times and memory, prints the fit against the
measurements, and writes `device.json`, which `clock=devices clock.profile=...` loads.
Only step time and memory are measured: `device.json` keeps each fitted value's points and
fit error beside it (`fitted`) and names the values it cannot measure (memory cap, power,
bandwidth, latency: fedbatch's defaults) as `presets`, to be edited to match the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedbatch.config import ConfigError, RunConfig
from fedbatch.config.compose import OverrideError, compose_config
from fedbatch.simulate import fail

VARIANTS = {
    "fp32": ("fp32", False),
    "bf16": ("bf16", False),
    "checkpointing": ("fp32", True),
    "bf16+checkpointing": ("bf16", True),
}
MB = 2**20
FITTED_TIME = ("step_overhead", "throughput", "saturation", "scaling")
FITTED_MEMORY = ("memory_base", "memory_per_sample")
LABELS = ("name", "share")  # a one-device profile's label and share: neither measured nor assumed
UNITS = {"memory_cap": "MB", "power": "W", "bandwidth_down": "Mbit/s", "bandwidth_up": "Mbit/s"}
UNITS |= {"latency": "s"}
PRESETS_NOTE = (
    "not measured on this machine: fedbatch's default device values; "
    "edit device.<key> to match your device"
)


def _compose(overrides: list[str]) -> RunConfig:
    try:
        return compose_config(overrides)
    except (OverrideError, ConfigError) as error:
        fail(str(error))
    raise AssertionError("unreachable")


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        fail(f"--batch-sizes={text!r} is invalid: allowed comma-separated integers >= 1")
    return sizes


def calibrate(
    cfg: RunConfig, batch_sizes: list[int], variants: list[str], repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """Profiles per variant; batch sizes beyond the training set are skipped."""
    import torch

    from fedbatch.federated.workload import build_workload
    from fedbatch.local.optim import build_optimizer
    from fedbatch.local.profile import profile_step

    workload = build_workload(cfg)
    results: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        precision, checkpointing = VARIANTS[variant]
        model_cfg = dataclasses.replace(cfg.model, checkpointing=checkpointing)
        workload_variant = dataclasses.replace(
            workload, cfg=dataclasses.replace(cfg, model=model_cfg)
        )
        rows = []
        for batch_size in (b for b in batch_sizes if b <= len(workload.x_train)):
            model = workload_variant.initial_model()
            optimizer = build_optimizer(model.parameters(), cfg.client)
            generator = torch.Generator().manual_seed(batch_size)
            index = torch.randperm(len(workload.x_train), generator=generator)[:batch_size]
            index = index.to(workload.device)
            x, y = workload.x_train[index], workload.y_train[index]
            step = profile_step(model, optimizer, x, y, precision=precision, repeats=repeats)
            rows.append(dataclasses.asdict(step) | {"peak_bytes": step.peak_bytes})
        results[variant] = rows
    return results


def _table(results: dict[str, list[dict[str, Any]]], device: str) -> Table:
    table = Table(title=f"one training step on {device}: time and memory by batch size")
    for column in ("variant", "B", "ms/step", "samples/s", "activations MB", "total MB"):
        table.add_column(column, justify="right")
    for variant, rows in results.items():
        for row in rows:
            table.add_row(
                variant,
                str(row["batch_size"]),
                f"{row['seconds'] * 1e3:.3f}",
                f"{row['batch_size'] / row['seconds']:.0f}",
                f"{row['activation_bytes'] / MB:.3f}",
                f"{row['peak_bytes'] / MB:.3f}",
            )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedbatch.calibrate", description=__doc__)
    parser.add_argument("--batch-sizes", default=",".join(str(2**i) for i in range(11)))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget-mb", type=float, default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/calibration"))
    args, overrides = parser.parse_known_args(argv)
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            fail(f"--variants={variant!r} is invalid: allowed one of {', '.join(VARIANTS)}")
    cfg = _compose(overrides)
    from fedbatch.federated.workload import resolve_device

    device, repeats = resolve_device(cfg.device), max(1, args.repeats)
    model = dataclasses.asdict(cfg.model)
    results = calibrate(cfg, _batch_sizes(args.batch_sizes), variants, repeats)
    console = Console()
    console.print(_table(results, str(device)))
    output: dict[str, Any] = {"device": str(device), "model": model}
    output["variants"] = results
    if args.budget_mb is not None:
        from fedbatch.local.profile import StepProfile, largest_batch_within

        budget = int(args.budget_mb * MB)
        largest = {}
        for variant, rows in results.items():
            fields = {f.name for f in dataclasses.fields(StepProfile)}
            profiles = [StepProfile(**{k: r[k] for k in fields}) for r in rows]
            largest[variant] = largest_batch_within(profiles, budget)
            console.print(f"largest B within {args.budget_mb:g} MB, {variant}: {largest[variant]}")
        output["budget_mb"], output["largest_batch"] = args.budget_mb, largest
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(output, indent=2), encoding="utf-8")
    console.print(f"wrote {args.out / 'calibration.json'}")
    if results.get("fp32"):
        _write_device(
            device_profile(results["fp32"], str(device), repeats, model), args.out, console
        )


def device_profile(
    rows: list[dict[str, Any]], device: str, repeats: int, model: dict[str, Any]
) -> dict[str, Any]:
    """The clock's device fitted to the fp32 rows, saying what each value rests on: the
    fitted ones beside their measurements and fit errors, the others named as presets."""
    from fedbatch.clock.devices import fit_device, relative_errors

    sizes = [row["batch_size"] for row in rows]
    seconds = [row["seconds"] for row in rows]
    memory = [row["peak_bytes"] / MB for row in rows]
    fitted = fit_device(sizes, seconds, memory, name=f"calibrated-{device}")
    memory_errors = [abs(fitted.memory_mb(b) - m) / m for b, m in zip(sizes, memory, strict=True)]
    values = dataclasses.asdict(fitted)
    not_fitted = FITTED_TIME + FITTED_MEMORY + LABELS
    return {
        "device": values,
        "fitted": {
            "measured_on": device,
            "model": model,
            "step_time": {
                "keys": list(FITTED_TIME),
                "points": len(sizes),
                "measured": f"fp32 seconds per step, the fastest of {repeats} steps per B",
                "batch_sizes": sizes,
                "seconds": seconds,
                "max_relative_error": max(relative_errors(fitted, sizes, seconds)),
            },
            "memory": {
                "keys": list(FITTED_MEMORY),
                "points": len(sizes),
                "measured": "MB of weights, gradients, optimizer state and activations saved "
                "for backward, counted per tensor",
                "batch_sizes": sizes,
                "mb": memory,
                "max_relative_error": max(memory_errors),
            },
        },
        "presets": {"keys": [k for k in values if k not in not_fitted], "note": PRESETS_NOTE},
    }


def _write_device(profile: dict[str, Any], out: Path, console: Console) -> None:
    """Print the fit against every measurement, and the presets; write `device.json`."""
    from fedbatch.clock.devices import DeviceClass, relative_errors

    device = DeviceClass(**profile["device"])
    timing, memory = profile["fitted"]["step_time"], profile["fitted"]["memory"]
    sizes, seconds = timing["batch_sizes"], timing["seconds"]
    table = Table(
        title=f"device model fit: t0 = {device.step_overhead * 1e3:.3f} ms, throughput "
        f"{device.throughput:.0f} samples/s from B = {device.saturation}, α = {device.scaling:g}"
    )
    for column in ("B", "measured ms", "fitted ms", "error"):
        table.add_column(column, justify="right")
    errors = relative_errors(device, sizes, seconds)
    for size, measured, error in zip(sizes, seconds, errors, strict=True):
        fit_ms = device.step_seconds(size) * 1e3
        table.add_row(str(size), f"{measured * 1e3:.3f}", f"{fit_ms:.3f}", f"{error:.1%}")
    console.print(table)
    console.print(
        f"fitted to {timing['points']} points ({timing['measured']}): largest error "
        f"{timing['max_relative_error']:.1%}; memory {device.memory_base:.3f} MB + "
        f"{device.memory_per_sample:.5f} MB per sample, fitted to {memory['points']} points, "
        f"largest error {memory['max_relative_error']:.1%}"
    )
    presets = ", ".join(
        f"{key}={profile['device'][key]:g} {UNITS.get(key, '')}".rstrip()
        for key in profile["presets"]["keys"]
    )
    console.print(f"presets ({profile['presets']['note']}): {presets}")
    path = out / "device.json"
    path.write_text(json.dumps(profile, indent=2) + "\n")
    console.print(f"wrote {path} (use: clock.profile={path})")


if __name__ == "__main__":
    main(sys.argv[1:])
