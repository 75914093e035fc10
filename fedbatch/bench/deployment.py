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
PARTS = ("polling", "flower_startup", "fedbatch_imports", "handoff", "data", "training", "reply")
PARTS += ("server",)
# The ClientApp's parts again in its own CPU seconds, which a busy machine sways less.
CPU_PARTS = ("flower_startup", "fedbatch_imports", "data", "training")


def deploy_command(
    argv: tuple[str, ...], run_dir: Path, workdir: Path, flags: tuple[str, ...] = ()
) -> list[str]:
    deploy = [sys.executable, "-m", "fedbatch.deploy", "local", "--nodes", str(NODES)]
    deploy += ["--insecure", "--workdir", str(workdir), *flags]
    return [*deploy, *argv, "progress=off", f"hydra.run.dir={run_dir}"]


def run_deployment(
    argv: tuple[str, ...], flags: tuple[str, ...] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One deployed run (`deploy local` `flags`): its metrics rows and its timing lines."""
    with tempfile.TemporaryDirectory(prefix="fedbatch-bench-deploy-") as tmp:
        timing, run_dir = Path(tmp) / "timing.jsonl", Path(tmp) / "run"
        env = os.environ | {TIMING_ENV: str(timing)}
        command = deploy_command(argv, run_dir, Path(tmp) / "federation", flags)
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
        split = {"round": seconds[server_round]}
        split["polling"] = c["process_start"] - exchange["sent"] + arrived - c["returned"]
        split |= client_parts(c)
        split["server"] = seconds[server_round] - (arrived - exchange["sent"])
        parts.append(split)
    return parts


def client_parts(c: dict[str, Any]) -> dict[str, float]:
    """A ClientApp process's line in parts (seconds). A process that handed its message to
    the node's worker (`worker_*` marks, from the worker's clocks) adds the hand-off: to
    the worker (its start, if it was not running) and back."""
    w = "worker_" if "worker_handler" in c else ""
    start = c[f"{w}handler"]
    return {
        "flower_startup": c["imports_start"] - c["process_start"],
        "fedbatch_imports": c["handler"] - c["imports_start"],
        "handoff": start - c["handler"] + c["returned"] - c[f"{w}returned"],
        "data": c[f"{w}data"] - start,
        "training": c[f"{w}trained"] - c[f"{w}data"],
        "reply": c[f"{w}returned"] - c[f"{w}trained"],
        "cpu_flower_startup": c["imports_start_cpu"],  # from the process's start
        "cpu_fedbatch_imports": c["handler_cpu"] - c["imports_start_cpu"],
        "cpu_data": c[f"{w}data_cpu"] - c[f"{w}handler_cpu"],
        "cpu_training": c[f"{w}trained_cpu"] - c[f"{w}data_cpu"],
    }


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


MODES = {"worker": (), "per-message": ("--no-worker",)}  # `deploy local` flags


def bench_deployment(
    argv: tuple[str, ...], repeats: int, run_once: Callable[[str, RunConfig], dict[str, Any]]
) -> dict[str, Any]:
    """Deployed runs of the experiment `argv` (`deploy local` overrides) with the node
    worker and without it (a process per message), and in-process runs, interleaved: the
    medians of each part over every steady-state round, and the target's ratios."""
    cfg = compose_config([*argv, f"num_clients={NODES}", f"clients_per_round={NODES}"])
    parts: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    inprocess: list[float] = []
    for _ in range(repeats):
        for mode, flags in MODES.items():
            parts[mode] += split_rounds(*run_deployment(argv, flags))
        inprocess += run_once("inprocess", cfg).get("round_seconds", [])
    transfer = transfer_seconds(cfg)
    baseline = statistics.median(inprocess) + transfer
    results: dict[str, Any] = {mode: summarize(rounds, baseline) for mode, rounds in parts.items()}
    results |= {"inprocess_round": statistics.median(inprocess), "transfer": transfer}
    return {"deployment": results | {"load": os.getloadavg()[0]}}


def summarize(rounds: list[dict[str, float]], baseline: float) -> dict[str, Any]:
    """Each part's median over `rounds`, and the target's ratios to `baseline`. The medians
    of the parts do not add up to the round's (polling alone varies by seconds from round
    to round), so each round's own polling (and Flower's start-up) is taken off that round
    before the median is taken."""
    names = ("round", *PARTS, *(f"cpu_{part}" for part in CPU_PARTS))
    median = {name: statistics.median(p[name] for p in rounds) for name in names}
    ours = statistics.median(p["round"] - p["polling"] for p in rounds)
    fedbatch_only = statistics.median(
        p["round"] - p["polling"] - p["flower_startup"] for p in rounds
    )
    return median | {
        "rounds_measured": len(rounds),
        "round_without_polling": ours,
        "fedbatch_seconds": fedbatch_only,
        "ratio": ours / baseline,
        "ratio_without_flower_startup": fedbatch_only / baseline,
    }


def print_deployment(results: dict[str, Any], console: Console) -> None:
    r = results["deployment"]
    console.print(
        f"deployment ({NODES} loopback SuperNodes), medians of steady-state rounds; "
        f"in-process round {r['inprocess_round']:.3f} s + transfer "
        f"{1000 * r['transfer']:.1f} ms; 1-min load {r['load']:.1f}"
    )
    for mode in MODES:
        m = r[mode]
        console.print(f"{mode} ({m['rounds_measured']} rounds): round {m['round']:.2f} s")
        for part in PARTS:
            cpu = f"  ({m[f'cpu_{part}']:.2f} CPU s)" if part in CPU_PARTS else ""
            console.print(f"  {part:<17} {m[part]:6.3f} s{cpu}")
        console.print(
            f"  round without polling {m['round_without_polling']:.2f} s: ratio "
            f"{m['ratio']:.1f} (target ≤ 2); without Flower's process start-up too "
            f"{m['fedbatch_seconds']:.3f} s: ratio {m['ratio_without_flower_startup']:.1f}"
        )
