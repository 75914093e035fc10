"""One local step of 50 clients of the `pfl` benchmark CNN, batched in different ways.

    python simulations/bench/vectorized_cnn.py --threads 1 --repeats 5

The `pfl` case's CNN (3×32×32 images, conv 16 and 32, 5×5, B=10), one SGD step for each
of 50 clients with their own weights: `plain` steps them one by one (torch.optim.SGD; NCHW
or channels_last weights), `vmap` runs `functional_call` under torch.func.vmap (engine=
vectorized before grouped.py), `grouped` runs `fedbatch.local.grouped` (convolutions with
groups=k; all 50 clients in one pass or a few per pass, the default). Median seconds per
50-client step, interleaved, and each ratio to plain channels_last.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from fedbatch.config import ModelConfig
from fedbatch.local import grouped
from fedbatch.local.models import build_model

CLIENTS, B = 50, 10
Params = dict[str, torch.Tensor]


def plain(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def run() -> None:
        for c in range(CLIENTS):
            optimizer.zero_grad()
            F.cross_entropy(model(x[c]), y[c]).backward()
            optimizer.step()

    return run


def _sgd(params: Params, loss: torch.Tensor) -> None:
    grads = torch.autograd.grad(loss, list(params.values()))
    with torch.no_grad():
        for param, grad in zip(params.values(), grads, strict=True):
            param.sub_(0.01 * grad)


def vmapped(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor):
    def loss(p: Params, xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xc,)), yc)

    losses = vmap(loss)
    return lambda: _sgd(params, losses(params, x, y).sum())


def grouped_step(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor,
                 per_pass: int) -> Callable[[], None]:  # fmt: skip
    def run() -> None:
        for start in range(0, CLIENTS, per_pass):
            chunk = slice(start, start + per_pass)
            leaves = {k: v[chunk].detach().requires_grad_() for k, v in params.items()}
            logits = grouped.grouped_logits(model, leaves, x[chunk])
            loss = F.cross_entropy(logits.flatten(0, 1), y[chunk].flatten(), reduction="sum")
            grads = torch.autograd.grad(loss / B, list(leaves.values()))
            with torch.no_grad():
                for param, grad in zip(params.values(), grads, strict=True):
                    param[chunk].sub_(0.01 * grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(name="cnn", channels=[16, 32], kernel_size=5)
    model = build_model(cfg, (3, 32, 32), 10)
    x, y = torch.randn(CLIENTS, B, 3, 32, 32), torch.randint(0, 10, (CLIENTS, B))
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def stacked() -> Params:
        return {k: torch.stack([v.detach()] * CLIENTS).clone() for k, v in model.named_parameters()}

    per_pass = max(1, grouped.ROWS_PER_PASS // B)
    candidates = {
        "plain, NCHW": plain(copy.deepcopy(model), x, y),
        "plain, channels_last": plain(channels_last, x, y),
        "vmap (NCHW)": vmapped(model, {k: v.requires_grad_() for k, v in stacked().items()}, x, y),
        "grouped, 50 clients a pass": grouped_step(channels_last, stacked(), x, y, CLIENTS),
        f"grouped, {per_pass} clients a pass": grouped_step(
            channels_last, stacked(), x, y, per_pass
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for run in candidates.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain, channels_last"])
    print(f"threads={args.threads}, {CLIENTS} clients × 1 step of B={B}, median of {args.repeats}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median * 1e3:.0f} ms | {median / base:.2f} |")


if __name__ == "__main__":
    main()
