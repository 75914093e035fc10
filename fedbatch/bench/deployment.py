"""Case `deployment`: where a steady-state round of `deploy local --nodes 2` goes.

One run of `python -m fedbatch.deploy local --nodes 2 --insecure` with `FEDBATCH_TIMING`
set (`fedbatch.federated.timing`): the server notes when it sends each round's messages
and when each reply comes back; each ClientApp process notes its own start, when
fedbatch's imports began, its handler's start, data ready, training done and its return.
Per round after the first, the client whose reply came last splits the round into:

- polling: Flower's, fedbatch cannot shorten it: from the server's send to the process
  start (the SuperNode's 3 s sleep after an empty poll, the SuperExec's poll, the fork)
  plus from the handler's return to the reply at the server (Flower's push, the
  SuperNode's 0.5 s reply poll, the server's pull);
- start-up: Flower's (interpreter, Flower, the message and app install) then fedbatch's
  imports (torch among them);
- data: the workload (config, the node's prepared data, torch's compile stack that the
  first optimizer imports, the model);
- training, reply (metrics and arrays), server (planning, aggregation, evaluation, row).

The target compares everything but polling with an in-process round of the same run
(`fedbatch.bench.runners inprocess`) plus the transfer time: the model's bytes there and
back over a local socket, as its two messages carry them.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from fedbatch.config import RunConfig
from fedbatch.config.compose import compose_config
from fedbatch.federated.timing import TIMING_ENV

NODES = 2
PARTS = ("polling", "flower_startup", "fedbatch_imports", "data", "training", "reply", "server")
# The ClientApp's parts again in its own CPU seconds, which a busy machine sways less.
CPU_PARTS = ("flower_startup", "fedbatch_imports", "data", "training")


def deploy_command(argv: tuple[str, ...], run_dir: Path, workdir: Path) -> list[str]:
    deploy = [sys.executable, "-m", "fedbatch.deploy", "local", "--nodes", str(NODES)]
    deploy += ["--insecure", "--workdir", str(workdir)]
    return [*deploy, *argv, "progress=off", f"hydra.run.dir={run_dir}"]


def run_deployment(argv: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One deployed run: its metrics rows and its timing lines."""
    with tempfile.TemporaryDirectory(prefix="fedbatch-bench-deploy-") as tmp:
        timing, run_dir = Path(tmp) / "timing.jsonl", Path(tmp) / "run"
        env = os.environ | {TIMING_ENV: str(timing)}
        command = deploy_command(argv, run_dir, Path(tmp) / "federation")
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"deploy local failed:\n{(done.stdout + done.stderr)[-2000:]}")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        lines = [json.loads(line) for line in timing.open()]
    return rows, lines


def split_rounds(rows: list[dict[str, Any]], lines: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Each training round's parts (seconds), from its slowest client; the first round
    (each node builds its data cache then) is left out."""
    clients = {line["message_id"]: line for line in lines if line["kind"] == "client"}
    exchanges = [line for line in lines if line["kind"] == "server" and line["phase"] == "train"]
    seconds = {row["round"]: row["seconds"] for row in rows if row["round"] > 0}
    parts = []
    for server_round, exchange in enumerate(exchanges, start=1):
        if server_round == 1 or server_round not in seconds or not exchange["replies"]:
            continue
        message_id, arrived = max(exchange["replies"].items(), key=lambda item: item[1])
        c = clients.get(message_id)
        if c is None:  # its process did not exit normally: no line
            continue
        split = {
            "round": seconds[server_round],
            "polling": c["process_start"] - exchange["sent"] + arrived - c["returned"],
            "flower_startup": c["imports_start"] - c["process_start"],
            "fedbatch_imports": c["handler"] - c["imports_start"],
            "data": c["data"] - c["handler"],
            "training": c["trained"] - c["data"],
            "reply": c["returned"] - c["trained"],
        }
        split["server"] = seconds[server_round] - (arrived - exchange["sent"])
        marks = ("imports_start", "handler", "data", "trained")
        split["cpu_flower_startup"] = c["imports_start_cpu"]  # from the process's start
        for part, (begin, end) in zip(CPU_PARTS[1:], itertools.pairwise(marks), strict=True):
            split[f"cpu_{part}"] = c[f"{end}_cpu"] - c[f"{begin}_cpu"]
        parts.append(split)
    return parts


def transfer_seconds(cfg: RunConfig, repeats: int = 5) -> float:
    """The model's arrays to bytes, through a local socket and back to arrays, both ways
    (the message and the reply): the least of `repeats` tries."""
    import numpy as np

    from fedbatch.federated.workload import workload_for

    state = workload_for(cfg.to_json()).initial_model().state_dict()
    arrays = [value.detach().cpu().numpy() for value in state.values()]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _direction in range(2):
            payload = b"".join(array.tobytes() for array in arrays)
            received = _through_socket(payload)
            offset = 0
            for array in arrays:
                np.frombuffer(received, array.dtype, array.size, offset).reshape(array.shape)
                offset += array.nbytes
        best = min(best, time.perf_counter() - start)
    return best


def _through_socket(payload: bytes) -> bytes:
    sender, receiver = socket.socketpair()
    with sender, receiver:
        thread = threading.Thread(target=sender.sendall, args=(payload,))
        thread.start()
        chunks, size = [], 0
        while size < len(payload):
            chunk = receiver.recv(1 << 20)
            chunks.append(chunk)
            size += len(chunk)
        thread.join()
    return b"".join(chunks)


def bench_deployment(
    argv: tuple[str, ...], repeats: int, run_once: Callable[[str, RunConfig], dict[str, Any]]
) -> dict[str, Any]:
    """Deployed and in-process runs of the experiment `argv` (`deploy local` overrides),
    interleaved: the medians of each part over every steady-state round, the target's
    ratio."""
    cfg = compose_config([*argv, f"num_clients={NODES}", f"clients_per_round={NODES}"])
    parts: list[dict[str, float]] = []
    inprocess: list[float] = []
    for _ in range(repeats):
        parts += split_rounds(*run_deployment(argv))
        inprocess += run_once("inprocess", cfg).get("round_seconds", [])
    names = ("round", *PARTS, *(f"cpu_{part}" for part in CPU_PARTS))
    median = {name: statistics.median(p[name] for p in parts) for name in names}
    transfer = transfer_seconds(cfg)
    inprocess_round = statistics.median(inprocess)
    ours = median["round"] - median["polling"]
    return {
        "deployment": median
        | {
            "rounds_measured": len(parts),
            "inprocess_round": inprocess_round,
            "transfer": transfer,
            "round_without_polling": ours,
            "ratio": ours / (inprocess_round + transfer),
            "load": os.getloadavg()[0],
        }
    }


def print_deployment(results: dict[str, Any], console: Console) -> None:
    r = results["deployment"]
    console.print(
        f"deployment ({NODES} loopback SuperNodes), medians of {r['rounds_measured']} "
        f"steady-state rounds: round {r['round']:.2f} s"
    )
    for part in PARTS:
        cpu = f"  ({r[f'cpu_{part}']:.2f} CPU s)" if part in CPU_PARTS else ""
        console.print(f"  {part:<17} {r[part]:6.2f} s{cpu}")
    console.print(
        f"round without polling {r['round_without_polling']:.2f} s; in-process round "
        f"{r['inprocess_round']:.3f} s + transfer {1000 * r['transfer']:.1f} ms; ratio "
        f"{r['ratio']:.1f} (target ≤ 2); 1-min load {r['load']:.1f}"
    )
