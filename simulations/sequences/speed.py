"""Seconds per local epoch with and without bucketing, the fastest of several repeats
(robust to other load on the machine): one client's data of the study, its GRU, Adam.

Usage: python simulations/sequences/speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedbatch.config import build_config
from fedbatch.federated.workload import build_workload
from fedbatch.local.trainer import train_local

STUDY = {
    "data": {"name": "text", "num_samples": 1200},
    "model": {"name": "gru"},
    "num_clients": 4,
    "clients_per_round": 4,
    "device": "cpu",
}


def epoch_seconds(batch_size: int, bucket: bool, repeats: int) -> tuple[float, float]:
    """(fastest seconds, padding fraction) of one epoch over client 0's data."""
    workload = build_workload(build_config(STUDY))
    x, y = workload.client_data(0)
    fastest, padding = float("inf"), float("nan")
    for repeat in range(repeats):
        model = workload.initial_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        start = time.perf_counter()
        result = train_local(
            model,
            optimizer,
            x,
            y,
            generator=torch.Generator().manual_seed(repeat),
            batch_size=batch_size,
            bucket_by_length=bucket,
        )
        fastest = min(fastest, time.perf_counter() - start)
        padding = 1 - result.tokens / result.token_slots
    return fastest, padding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    print("| B | bucketing | padding fraction | seconds per epoch (fastest) | speed-up |")
    print("|---|---|---|---|---|")
    for batch_size in (8, 32, 128):
        plain, plain_padding = epoch_seconds(batch_size, False, repeats)
        bucketed, bucketed_padding = epoch_seconds(batch_size, True, repeats)
        speedup = plain / bucketed
        print(f"| {batch_size} | off | {plain_padding:.3f} | {plain:.2f} | |")
        print(f"| {batch_size} | on | {bucketed_padding:.3f} | {bucketed:.2f} | {speedup:.2f}× |")


if __name__ == "__main__":
    main()
