"""Training-step time of fedbatch's CNN with NCHW against channels_last weights, on this CPU.

    python simulations/bench/memory_format.py --repeats 7

For each image shape, norm and batch size B, two copies of the same model (one converted
with `.to(memory_format=torch.channels_last)`) take SGD steps on the same batches,
interleaved; the table gives the median seconds per step and their ratio. The inputs stay
NCHW, as fedbatch's data does: a convolution with channels_last weights computes in NHWC.
This is what `model.memory_format=auto` chose channels_last on the CPU from.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.config import ModelConfig
from fedbatch.local.models import build_model

STEPS = 4  # per timed call, each on its own batch


def steps_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def run() -> None:
        for i in range(STEPS):
            rows = slice(i * batch, (i + 1) * batch)
            optimizer.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()

    return run


def seconds_per_step(
    shape: tuple[int, int, int], norm: str, batch: int, repeats: int
) -> dict[str, float]:
    torch.manual_seed(0)
    nchw = build_model(ModelConfig(name="cnn", channels=(16, 32), norm=norm), shape, 10)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x = torch.randn(batch * STEPS, *shape)
    y = torch.randint(0, 10, (batch * STEPS,))
    runs = {"nchw": steps_of(nchw, x, y, batch), "channels_last": steps_of(nhwc, x, y, batch)}
    calls = max(3, 200 // batch)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up: oneDNN builds its kernels on first use
    for _ in range(repeats):
        for name, run in runs.items():  # interleaved: both see the same machine speed
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / (calls * STEPS))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    norms, batches = ("none", "batch", "group"), (1, 10, 64, 256)
    cases = [((3, 32, 32), norm, b) for norm in norms for b in batches]
    cases += [(shape, "none", b) for b in (1, 10, 64) for shape in ((1, 8, 8), (1, 28, 28))]
    print("| input | norm | B | NCHW ms/step | channels_last ms/step | ratio |")
    print("|---|---|---|---|---|---|")
    for shape, norm, batch in cases:
        t = seconds_per_step(shape, norm, batch, args.repeats)
        ratio = t["channels_last"] / t["nchw"]
        shown = "×".join(map(str, shape))
        print(
            f"| {shown} | {norm} | {batch} | {1e3 * t['nchw']:.3f} | "
            f"{1e3 * t['channels_last']:.3f} | {ratio:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
