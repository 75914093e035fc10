"""The Flower ServerApp and its round loop.

The loop drives a Flower strategy through `configure_train` → `aggregate_train` →
`configure_evaluate` → `aggregate_evaluate` and hands every round to callbacks
(server-side evaluation, convergence monitoring, metrics sink, progress). Every engine runs
this same loop; only the Grid differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

from fedbatch.config import RunConfig, config_from_json
from fedbatch.federated.async_loop import run_async
from fedbatch.federated.evaluation import PooledExactNoise, ServerEvaluation
from fedbatch.federated.monitoring import ROW_KEYS as INSTRUMENT_KEYS
from fedbatch.federated.monitoring import RoundInstruments
from fedbatch.federated.nodes import PartitionedGrid, partition_order
from fedbatch.federated.records import model_to_arrays
from fedbatch.federated.sampling import SampledNodesGrid
from fedbatch.federated.strategies import (
    ASYNC_PARAMETERS,
    build_strategy,
    check_strategy_params,
)
from fedbatch.federated.timing import ROW_KEYS as CLOCK_KEYS
from fedbatch.federated.timing import RoundClock, record_bytes
from fedbatch.federated.workload import Workload, workload_for
from fedbatch.metrics.callbacks import Callback, ConvergenceMonitor, RoundState, RunOutcome
from fedbatch.metrics.progress import RichProgress
from fedbatch.metrics.sink import JsonlSink, LineSink, SummaryWriter

ROW_KEYS = (
    "round", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
    "global_train_loss", "global_train_accuracy", "client_eval_loss", "client_eval_accuracy",
    "clients_sampled", "clients_replied", "clients_failed", "examples", "examples_seen",
    "steps", "grad_norm_mean", "grad_norm_max", "generalization_gap", "client_error",
    "seconds", "elapsed_seconds", "noise_scale_exact_global",
    *INSTRUMENT_KEYS, *CLOCK_KEYS,
)  # fmt: skip


def _address(
    messages: Iterable[Message],
    partition_of: dict[int, int],
    extra: Callable[[int], dict[str, Any]] | None = None,
) -> list[Message]:
    """Give each message its own ConfigRecord naming the partition its node simulates
    (and any per-client values from `extra`).

    Messages are put in partition order, so aggregation sums in the same order always.
    """
    addressed = []
    for msg in sorted(messages, key=lambda m: partition_of[m.metadata.dst_node_id]):
        content = msg.content
        config = content.config_records["config"].copy()  # validated once, when built
        partition = partition_of[msg.metadata.dst_node_id]
        config["partition-id"] = partition
        if extra is not None:
            for key, value in extra(partition).items():
                config[key] = value
        records: dict[str, Any] = dict(content.array_records)
        records["config"] = config
        msg.content = RecordDict(records)
        addressed.append(msg)
    return addressed


def _metric(metrics: MetricRecord | None, key: str) -> Any:
    return metrics[key] if metrics is not None and key in metrics else None


def run_rounds(
    grid: Grid,
    cfg: RunConfig,
    callbacks: Sequence[Callback],
    *,
    initial_arrays: ArrayRecord,
    pooled_size: int | None = None,
) -> RunOutcome:
    """Run up to `cfg.rounds` rounds of the configured strategy on `grid`, whose nodes are
    listed in partition order. `pooled_size`: the training data's size over all
    partitions (the global noise scale's population)."""
    asynchronous = cfg.strategy.name in ASYNC_PARAMETERS
    if asynchronous:
        check_strategy_params(cfg)
    strategy = None if asynchronous else build_strategy(cfg)
    nodes = SampledNodesGrid(grid)
    partition_of = {node: i for i, node in enumerate(nodes.all_node_ids)}
    evaluate_count = max(1, int(cfg.num_clients * cfg.strategy.fraction_evaluate))
    instruments = RoundInstruments(cfg, pooled_size)
    clock = RoundClock(cfg) if cfg.clock.on else None
    model_bytes = record_bytes(initial_arrays)
    arrays, base = initial_arrays, {"run-config": cfg.to_json()}
    start = time.perf_counter()

    def notify(state: RoundState) -> None:
        for callback in callbacks:
            callback.on_round_end(state)

    window_end = [0.0]  # with a clock and a stream: where the last round's window ended
    unavailable = [0]  # clients selected in this round's train phase that were offline

    def limits(partition: int) -> dict[str, Any]:
        assert clock is not None
        return clock.limits(partition, base["batch-size"], model_bytes)

    def exchange(
        configure: Any, server_round: int, phase: str, count: int
    ) -> tuple[list[Message], list[Message]]:
        """Sample `count` clients, let the strategy configure them, collect the replies."""
        offered = nodes.offer(cfg.seed, server_round, phase, count)
        if configure is None:  # a query to the offered nodes, outside the strategy
            config = ConfigRecord(base | {"server-round": server_round})
            content = RecordDict({"arrays": arrays, "config": config})
            messages = [
                grid.create_message(content, MessageType.QUERY, node, str(server_round))
                for node in offered
            ]
        else:
            messages = list(configure(server_round, arrays, ConfigRecord(base), nodes))
        messages = _address(messages, partition_of, limits if clock else None)
        if clock is not None and phase == "train":  # unavailable clients never answer
            answering = [
                m for m in messages
                if clock.available(partition_of[m.metadata.dst_node_id], server_round)
            ]  # fmt: skip
            unavailable[0] = len(messages) - len(answering)
            messages = answering
        return messages, list(grid.send_and_receive(messages)) if messages else []

    start_row = dict.fromkeys(ROW_KEYS) | {"round": 0}
    if cfg.stream.streaming:
        start_row["virtual_seconds"] = 0.0
    notify(RoundState(0, arrays, start_row))
    if strategy is None:
        return _run_async(grid, cfg, callbacks, instruments, arrays, start)
    stopped_because, completed = "rounds", 0
    for server_round in range(1, cfg.rounds + 1):
        round_start = time.perf_counter()
        base |= instruments.round_config(server_round)
        selected = cfg.clients_per_round
        if clock is not None:
            selected = clock.select_count(cfg.clients_per_round)
            if cfg.stream.streaming:  # windows follow each other up to the clock's time
                start, end = window_end[0], clock.time + cfg.stream.round_seconds
                base |= {"window-start": start, "window-end": max(start, end)}
                window_end[0] = max(start, end)
        across = None
        if instruments.across_due(server_round):
            _, probe_replies = exchange(None, server_round, "train", cfg.clients_per_round)
            across = instruments.across_clients(probe_replies)
        before = arrays
        messages, replies = exchange(strategy.configure_train, server_round, "train", selected)
        arrived, clock_row = replies, {}
        if clock is not None:
            arrived, clock_row = clock.settle(
                server_round, replies, partition_of, model_bytes, cfg.clients_per_round
            )
            clock_row["clients_unavailable"] = unavailable[0]
        aggregated, train = strategy.aggregate_train(server_round, arrived)
        arrays = aggregated if aggregated is not None else arrays
        evaluation = None
        if cfg.strategy.fraction_evaluate > 0:
            _, eval_replies = exchange(
                strategy.configure_evaluate, server_round, "evaluate", evaluate_count
            )
            evaluation = strategy.aggregate_evaluate(server_round, eval_replies)
        now = time.perf_counter()
        errors = [r.error.reason for r in replies if r.has_error()]
        replied = len(replies) - len(errors)
        row = dict.fromkeys(ROW_KEYS) | {
            "round": server_round,
            "train_loss": _metric(train, "train_loss"),
            "train_accuracy": _metric(train, "train_accuracy"),
            "client_eval_loss": _metric(evaluation, "eval_loss"),
            "client_eval_accuracy": _metric(evaluation, "eval_accuracy"),
            "clients_sampled": len(messages),
            "clients_replied": replied,
            "clients_failed": len(messages) - replied,
            "examples": _metric(train, "num-examples"),
            "examples_seen": _metric(train, "examples_seen"),
            "steps": _metric(train, "steps"),
            "grad_norm_mean": _metric(train, "grad_norm_mean"),
            "grad_norm_max": _metric(train, "grad_norm_max"),
            "client_error": errors[0] if errors else None,
            "noise_scale_across": across,
            "seconds": now - round_start,
            "elapsed_seconds": now - start,
        }
        row |= instruments.measure(server_round, before, arrived, train) | clock_row
        row |= instruments.stream_totals(replies) | instruments.client_work(replies)
        state = RoundState(server_round, arrays, row)
        notify(state)
        if messages and not replied:
            state.stop_reason = state.stop_reason or "all_clients_failed"
        completed = server_round
        if state.stop_reason is not None:
            stopped_because = state.stop_reason
            break
    outcome = RunOutcome(completed, stopped_because, time.perf_counter() - start)
    for callback in callbacks:
        callback.on_run_end(outcome)
    return outcome


def _run_async(
    grid: Grid,
    cfg: RunConfig,
    callbacks: Sequence[Callback],
    instruments: RoundInstruments,
    initial: ArrayRecord,
    start: float,
) -> RunOutcome:
    """FedBuff / FedAsync: one row per aggregation, through the same callbacks."""

    def notify(server_round: int, arrays: ArrayRecord, values: dict[str, Any]) -> bool:
        row = dict.fromkeys(ROW_KEYS) | values | {"round": server_round}
        state = RoundState(server_round, arrays, row)
        for callback in callbacks:
            callback.on_round_end(state)
        if state.stop_reason is not None:
            stop[0] = state.stop_reason
        return state.stop_reason is not None

    def base(server_round: int) -> dict[str, Any]:
        return {"run-config": cfg.to_json()} | instruments.round_config(server_round)

    stop = ["rounds"]

    def measure(
        server_round: int, before: ArrayRecord, replies: list[Message], train: MetricRecord
    ) -> dict[str, Any]:
        probed = instruments.measure(server_round, before, replies, train)
        return probed | instruments.stream_totals(replies) | instruments.client_work(replies)

    completed, ended = run_async(grid, cfg, notify, base, measure, initial)
    reason = ended if ended == "all_clients_failed" else stop[0]
    outcome = RunOutcome(completed, reason, time.perf_counter() - start)
    for callback in callbacks:
        callback.on_run_end(outcome)
    return outcome


def standard_callbacks(
    workload: Workload, out_dir: Path | None, *, progress: bool, lines: bool = False
) -> tuple[list[Callback], SummaryWriter]:
    """Evaluation → convergence → metrics.jsonl → summary.json (→ progress bar) (→ rows
    and summary as lines on stdout). No files when `out_dir` is None."""
    cfg = workload.cfg
    monitor = ConvergenceMonitor(cfg.stop)
    summary = SummaryWriter(None if out_dir is None else out_dir / "summary.json", monitor)
    callbacks: list[Callback] = [ServerEvaluation(workload), monitor]
    if PooledExactNoise.wanted(workload):
        callbacks.insert(1, PooledExactNoise(workload))
    if out_dir is not None:
        callbacks.append(JsonlSink(out_dir / "metrics.jsonl"))
    callbacks.append(summary)
    if progress:
        callbacks.append(RichProgress(cfg.rounds))
    if lines:
        callbacks.append(LineSink(summary))
    return callbacks, summary


def quiet_flower_logs() -> None:
    """Flower logs every sampling and aggregation at INFO: noise on a hot path."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's link-state DB


def run_experiment(
    grid: Grid, cfg: RunConfig, out_dir: Path | None, *, progress: bool, lines: bool = False
) -> dict[str, Any]:
    """Run the experiment on `grid`, writing metrics.jsonl and summary.json to `out_dir`
    (if any) and, with `lines`, printing rows and summary as lines."""
    quiet_flower_logs()
    workload = workload_for(cfg.to_json())
    callbacks, summary = standard_callbacks(workload, out_dir, progress=progress, lines=lines)
    ordered = PartitionedGrid(grid, partition_order(grid, cfg), cfg.engine.round_timeout)
    run_rounds(
        ordered,
        cfg,
        callbacks,
        initial_arrays=model_to_arrays(workload.initial_model()),
        pooled_size=sum(len(p) for p in workload.partitions),
    )
    return summary.summary


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point under `flwr run`: the config travels in the run config as JSON. Rows
    stream back to the submitting machine; `output-dir`, if set, keeps copies here."""
    cfg = config_from_json(str(context.run_config["fedbatch-config"]))
    out_dir = str(context.run_config.get("output-dir", ""))
    run_experiment(grid, cfg, Path(out_dir) if out_dir else None, progress=False, lines=True)
