"""The Flower ClientApp: local mini-batch training, evaluation and gradient probes.

The run configuration arrives as JSON in every message's ConfigRecord (`run-config`), so
the same app works under every engine; the round's plan (batch size, AdaScale gain,
schedule progress, probes due) arrives beside it. In simulation the server also names the
partition to train on (`partition-id`); a real SuperNode uses the one in its node config.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedbatch.config import RunConfig
from fedbatch.federated import IMPORTS_STARTED, IMPORTS_STARTED_CPU
from fedbatch.federated.client_metrics import train_metrics, with_stream
from fedbatch.federated.client_optimizer import load_optimizer_state, save_optimizer_state
from fedbatch.federated.client_privacy import client_side_clipping
from fedbatch.federated.client_stream import stream_batches
from fedbatch.federated.faults import ClientFaults
from fedbatch.federated.records import (
    NUM_EXAMPLES,
    array_to_tensor,
    load_arrays,
    state_to_arrays,
    tensor_to_array,
)
from fedbatch.federated.timing import ClientTimeline
from fedbatch.federated.workload import Workload, workload_for
from fedbatch.local.batch_sizing import DeviceLimit, NoiseEstimate, RoundPlan
from fedbatch.local.instruments import mean_gradient, measure_at_weights
from fedbatch.local.models import norm_state_keys, set_dropout
from fedbatch.local.optim import build_optimizer
from fedbatch.local.plan import LocalPlan, plan_client_round
from fedbatch.local.sequences import real_targets
from fedbatch.local.trainer import TrainOptions, evaluate, train_local
from fedbatch.registry import TargetImportError
from fedbatch.seeding import derive_seed

app = ClientApp(mods=[client_side_clipping])
LOCAL_NORMS = "fedbn"  # context.state record holding this client's own BatchNorm layers
DATA_CACHE = "data-cache"  # node config: the directory keeping this node's prepared data


@dataclass(frozen=True)
class Task:
    workload: Workload
    config: ConfigRecord
    partition_id: int
    model: nn.Module  # this process's model, holding the received global weights
    x: torch.Tensor
    y: torch.Tensor

    @property
    def server_round(self) -> int:
        return int(self.config["server-round"])

    def seed(self, purpose: str) -> int:
        return derive_seed(self.workload.cfg.seed, purpose, self.partition_id, self.server_round)

    def generator(self, purpose: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed(purpose))

    @contextmanager
    def own_randomness(self) -> Iterator[None]:
        """Draws from torch's global generator (dropout masks) seeded for this client
        and round, then restored: the same numbers whichever process runs the client,
        in whatever order, and after a resume."""
        seed = self.seed("dropout")
        if self.x.device.type != "cpu":
            devices = [self.x.device] if self.x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield
            return
        # On the CPU only the CPU generator draws: seeding it alone gives the numbers
        # `torch.manual_seed` gives, without its per-call queueing of lazy CUDA/XPU/MTIA
        # seeds (each formats a stack trace: ~0.2 ms a call, 9% of a tiny client-round).
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            torch.set_rng_state(state)

    def plan(self) -> LocalPlan:
        config, cfg = self.config, self.workload.cfg
        gain_noise = None
        if "adascale-grad-sq" in config:
            gain_noise = NoiseEstimate(
                float(config["adascale-grad-sq"]), float(config["adascale-trace"])
            )
        round_plan = RoundPlan(config["batch-size"], 1.0, float(config["progress"]), gain_noise)
        mean_examples = len(self.workload.x_train) / cfg.num_clients
        device = None
        if "device-batch-policy" in config:  # the virtual device's say on B
            policy, value = config["device-batch-policy"], config["device-batch-value"]
            device = DeviceLimit(str(policy), float(value))
        return plan_client_round(
            cfg, round_plan, self.partition_id, len(self.x), mean_examples, device
        )


def setup_task(msg: Message, context: Context) -> Task:
    config = msg.content["config"]
    node = context.node_config  # a SuperNode's own `device` and `data-cache`, if any
    device, data_cache = node.get("device"), node.get(DATA_CACHE)
    try:  # the run's config and model import its `_target_` classes, if any
        workload = workload_for(
            str(config["run-config"]),
            None if device is None else str(device),
            None if data_cache is None else str(data_cache),
        )
        model = workload.model()
    except TargetImportError as error:  # this node's failure, one line: say where it must be
        where = " (on this node: every SuperNode must import it, installed or on PYTHONPATH)"
        raise TargetImportError(error.key, error.path, error.problem + where) from None
    key = "partition-id"
    partition_id = int(config[key] if key in config else context.node_config[key])
    load_arrays(model, msg.content["arrays"])
    if workload.cfg.model.fedbn and LOCAL_NORMS in context.state:
        _load_local_norms(model, context.state[LOCAL_NORMS])
    x, y = workload.client_data(partition_id)
    return Task(workload, config, partition_id, model, x, y)


@torch.no_grad()
def _load_local_norms(model: nn.Module, record: ArrayRecord) -> None:
    state = model.state_dict()
    for key, array in record.items():
        state[key].copy_(array_to_tensor(array))


def save_local_norms(model: nn.Module, context: Context) -> None:
    """FedBN: this client's BatchNorm layers survive the next round's global weights."""
    context.state[LOCAL_NORMS] = local_norms_record(model, model.state_dict())


def local_norms_record(model: nn.Module, state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """The BatchNorm layers of `model`'s trained state dict `state`, as FedBN keeps them."""
    return ArrayRecord({key: tensor_to_array(state[key]) for key in norm_state_keys(model)})


def device_limits(
    cfg: RunConfig, config: ConfigRecord, plan: LocalPlan
) -> tuple[int | None, int | None]:
    """The virtual device's limits: micro-batches that fit its memory (`clock.on_oom`) and,
    under a partial-work deadline, the steps that fit in time."""
    micro_batch, steps = None, cfg.client.steps
    max_batch = int(config["max-batch"]) if "max-batch" in config else None
    if max_batch is not None and plan.batch_size > max_batch:
        if cfg.clock.on_oom == "fail" or max_batch < 1:
            raise MemoryError(
                f"B={plan.batch_size} does not fit this client's device memory "
                f"(at most B={max_batch}; clock.on_oom=accumulate splits it)"
            )
        micro_batch = max_batch
    if "max-steps" in config:
        fit = int(config["max-steps"])
        steps = min(steps if steps is not None else plan.steps_per_round, fit)
    if "exact-steps" in config:  # an equal time budget: as many steps as fill it
        steps = int(config["exact-steps"])
    return micro_batch, steps


@app.train()
def train(msg: Message, context: Context) -> Message:
    imports = (IMPORTS_STARTED, IMPORTS_STARTED_CPU)
    timeline = ClientTimeline.begin(msg.metadata.message_id, "train", imports)
    task = setup_task(msg, context)
    timeline.mark("data")
    faults = ClientFaults.draw(task.workload.cfg, task.partition_id, task.server_round)
    faults.crash()
    # The real clock starts here: a deployment's fresh ClientApp process builds its data
    # in `setup_task`, which a device holding its data would not redo every round.
    started = time.perf_counter()
    cfg, config, model = task.workload.cfg, task.config, task.model
    plan = task.plan()
    due = list(config["probes"])
    probes = (
        measure_at_weights(
            model, task.x, task.y, due, cfg.monitor, plan.batch_size, task.generator("probe")
        )
        if due
        else {}
    )
    prox_mu = float(config.get("proximal-mu", 0.0))
    anchor = [p.detach().clone() for p in model.parameters()] if prox_mu > 0.0 else None
    client_cfg = cfg.client
    if plan.weight_decay != client_cfg.weight_decay:
        client_cfg = dataclasses.replace(client_cfg, weight_decay=plan.weight_decay)
    optimizer = build_optimizer(model.parameters(), client_cfg, lr=plan.first_lr())
    keep_state = client_cfg.optimizer_state == "keep"
    if keep_state:
        load_optimizer_state(optimizer, context)
    if cfg.model.dropout > 0:
        set_dropout(model, plan.dropout)
    micro_batch, steps = device_limits(cfg, config, plan)
    plan = plan.with_micro_batch(micro_batch)
    batches, streamed = None, None
    if cfg.stream.streaming:
        window = (float(config["window-start"]), float(config["window-end"]))
        batches, streamed = stream_batches(
            task.workload,
            task.partition_id,
            task.server_round,
            window,
            plan.effective_batch_size,
            steps,
            context,
        )
    drifted = cfg.stream.drift in ("covariate", "concept")
    options = TrainOptions(
        batch_size=plan.batch_size,
        epochs=client_cfg.epochs,
        steps=steps,
        accumulate=client_cfg.accumulate,
        micro_batch=micro_batch,
        precision=client_cfg.precision,
        lr_at=plan.lr_at,
        prox_mu=prox_mu,
        anchor=anchor,
        grad_norms=bool(config["grad-norms"]),
        layer_norms=bool(config["layer-norms"]),
        timing=cfg.monitor.timing,
        prefetch=client_cfg.prefetch,
        bucket_by_length=client_cfg.bucket_by_length,
        batches=batches,
        transform=task.workload.drift().apply if drifted else None,
    )
    start = faults.start(model)
    with task.own_randomness():
        result = train_local(
            model, optimizer, task.x, task.y, generator=task.generator("shuffle"), options=options
        )
    timeline.mark("trained", partition=task.partition_id, round=task.server_round)
    if cfg.model.fedbn:
        save_local_norms(model, context)
    if keep_state:
        save_optimizer_state(optimizer, context)
    metrics = train_metrics(task, plan, result, probes)
    if streamed is not None:
        metrics = with_stream(metrics, streamed, result)
    metrics = faults.reply_metrics(metrics)
    faults.delay()
    if cfg.clock.name == "real":  # this client's measured time: the real clock
        metrics["client_seconds"] = time.perf_counter() - started
    arrays = state_to_arrays(faults.reply_state(model, start))
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    timeline.mark("returned")
    return Message(content=content, reply_to=msg)


@app.query()
def gradient_probe(msg: Message, context: Context) -> Message:
    """The mean gradient over one batch of this client's B at the global weights: the
    per-client gradients of an across-client noise-scale probe round."""
    task = setup_task(msg, context)
    batch = min(task.plan().batch_size, len(task.x))
    index = torch.randperm(len(task.x), generator=task.generator("gradient-probe"))[:batch]
    index = index.to(task.x.device)
    grads = mean_gradient(task.model, task.x[index], task.y[index])
    names = [n for n, p in task.model.named_parameters() if p.requires_grad]
    arrays = ArrayRecord({n: tensor_to_array(g) for n, g in zip(names, grads, strict=True)})
    grad_sq = float(sum(g.double().pow(2).sum() for g in grads))
    metrics = MetricRecord({NUM_EXAMPLES: batch, "grad_sq": grad_sq})
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """The global model's loss and accuracy on this client's local data."""
    task = setup_task(msg, context)
    loss, accuracy = evaluate(task.model, task.x, task.y, task.workload.cfg.eval.batch_size)
    values = {NUM_EXAMPLES: len(task.x), "eval_loss": loss, "eval_accuracy": accuracy}
    if task.y.ndim == 2:  # text: loss and accuracy are over real tokens, weighed by them
        values["eval_tokens"] = int(real_targets(task.y))
    metrics = MetricRecord(values)
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """The partition this node holds (a SuperNode's `--node-config`), asked once by a
    deployment's server before round 1."""
    node = context.node_config
    metrics = MetricRecord(
        {"partition-id": int(node["partition-id"]), "num-partitions": int(node["num-partitions"])}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
