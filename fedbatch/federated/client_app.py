"""The Flower ClientApp: local mini-batch training and evaluation on one partition.

The run configuration arrives as JSON in every message's ConfigRecord (`run-config`), so
the same app works under every engine; per-round values (batch size, learning rate, local
work) arrive beside it. In simulation the server also names the partition to train on
(`partition-id`); a real SuperNode uses the one in its node config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedbatch.federated.records import NUM_EXAMPLES, load_arrays, model_to_arrays
from fedbatch.federated.workload import Workload, workload_for
from fedbatch.local.optim import build_optimizer
from fedbatch.local.trainer import evaluate, resolve_batch_size, train_local
from fedbatch.seeding import derive_seed

app = ClientApp()


@dataclass(frozen=True)
class _Task:
    workload: Workload
    config: ConfigRecord
    partition_id: int
    model: nn.Module  # this process's model, holding the received global weights


def _setup(msg: Message, context: Context) -> _Task:
    config = msg.content["config"]
    workload = workload_for(str(config["run-config"]))
    key = "partition-id"
    partition_id = int(config[key] if key in config else context.node_config[key])
    model = workload.model()
    load_arrays(model, msg.content["arrays"])
    return _Task(workload, config, partition_id, model)


@app.train()
def train(msg: Message, context: Context) -> Message:
    task = _setup(msg, context)
    cfg, config, model, partition_id = task.workload.cfg, task.config, task.model, task.partition_id
    x, y = task.workload.client_data(partition_id)
    server_round = int(config["server-round"])
    anchor = None
    prox_mu = float(config.get("proximal-mu", 0.0))
    if prox_mu > 0.0:
        anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = build_optimizer(model.parameters(), cfg.client, lr=float(config["lr"]))
    steps = int(config["local-steps"])
    generator = torch.Generator().manual_seed(
        derive_seed(cfg.seed, "shuffle", partition_id, server_round)
    )
    result = train_local(
        model,
        optimizer,
        x,
        y,
        batch_size=resolve_batch_size(config["batch-size"], len(x)),
        generator=generator,
        epochs=int(config["local-epochs"]),
        steps=steps if steps > 0 else None,
        prox_mu=prox_mu,
        anchor=anchor,
    )
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: len(x),
            "train_loss": result.loss,
            "train_accuracy": result.accuracy,
            "grad_norm_mean": result.grad_norm_mean,
            "grad_norm_max": result.grad_norm_max,
            "steps": result.steps,
            "examples_seen": result.examples_seen,
        }
    )
    content = RecordDict({"arrays": model_to_arrays(model), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    """The global model's loss and accuracy on this client's local data."""
    task = _setup(msg, context)
    x, y = task.workload.client_data(task.partition_id)
    loss, accuracy = evaluate(task.model, x, y, task.workload.cfg.eval.batch_size)
    metrics = MetricRecord({NUM_EXAMPLES: len(x), "eval_loss": loss, "eval_accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
