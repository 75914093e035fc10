"""The vectorized engine: the in-process engine, training a round's clients all at once.

`VectorizedGrid` answers every train message whose work is local training with one of
torch.optim's SGD, Adam, AdamW, RMSprop or Adagrad (fresh each round) on a model that
treats samples independently (`ineligible` lists what else there is) by one batched run
over the clients (`local/vectorized.py`: stacked weights, one batched forward pass), with the
ClientApp's own plan, shuffles and metrics, and builds for each message the reply the
ClientApp would build. Evaluate and query messages and ineligible rounds go through the
ClientApp one message at a time, as on the in-process engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Message, MessageType, RecordDict

from fedbatch.config import RunConfig
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.client_app import Task, device_limits, save_local_norms, setup_task
from fedbatch.federated.client_metrics import train_metrics
from fedbatch.federated.records import state_to_arrays
from fedbatch.federated.server_app import run_experiment
from fedbatch.local.minibatches import batch_schedule
from fedbatch.local.plan import LocalPlan
from fedbatch.local.stacked_optim import ADAPTIVE, AdaptiveRule, SGDRule, UpdateRule
from fedbatch.local.trainer import uses_batchnorm
from fedbatch.local.vectorized import ClientSteps, stack_params, train_clients

log = logging.getLogger(__name__)
SGD_RULES = ("sgd", "momentum", "nesterov")
BATCHED_OPTIMIZERS = SGD_RULES + ADAPTIVE
GROUPED_MODELS = ("cnn", "cnn1d", "mlp")  # BatchNorm: per client, in `grouped.py`


def ineligible(cfg: RunConfig, config: Mapping[str, Any] | None = None) -> list[str]:
    """Why the train messages of run `cfg` (in a round told `config`) cannot be batched;
    empty when they can. BatchNorm is batched for the models `grouped.py` runs (FedBN too:
    each client's layers go to its context as the ClientApp saves them), not with ghost
    batches; drift needs a stream; `clock=real` measures each client's own
    time: ruled out below. The virtual clock's step limits are honoured; a client whose
    device splits B into micro-batches goes through the ClientApp, message by message. A kept
    optimizer state lives in the ClientApp's context.state, so every round of such a run
    goes through the ClientApp (batching some rounds would leave it stale). A `_target_`
    model may hold BatchNorm or dropout its config does not show: ruled out too."""
    client, model = cfg.client, cfg.model
    checks = [
        (client.optimizer not in BATCHED_OPTIMIZERS, f"client.optimizer={client.optimizer}"),
        (client.precision != "fp32", f"client.precision={client.precision}"),
        (client.accumulate != 1, f"client.accumulate={client.accumulate}"),
        (client.optimizer_state == "keep", "client.optimizer_state=keep"),
        (
            model.norm == "batch" and model.name not in GROUPED_MODELS,
            f"model.norm=batch with model={model.name}",
        ),
        (model.ghost_batch is not None, "model.ghost_batch (ghost BatchNorm)"),
        (model.target is not None, f"model._target_={model.target}"),
        (model.dropout > 0, f"model.dropout={model.dropout}"),
        (model.checkpointing, "model.checkpointing=true"),
        (cfg.data.name == "text", "data=text (sequence models)"),
        (cfg.stream.streaming, f"stream={cfg.stream.name}"),
        (cfg.clock.name == "real", "clock=real (each client's measured time)"),
        (cfg.monitor.timing, "monitor.timing=true"),
        (cfg.privacy.side == "client" and cfg.privacy.clipping != "none", "privacy.side=client"),
        (cfg.faults.on, "faults (the ClientApp acts them out)"),
    ]
    if config is not None:
        probes = list(config.get("probes", []))
        checks += [
            (bool(probes), f"probes due this round: {', '.join(map(str, probes))}"),
            (bool(config.get("layer-norms", False)), "per-layer gradient norms due"),
            (float(config.get("proximal-mu", 0.0)) > 0, "a proximal term (FedProx)"),
        ]
    return [reason for failed, reason in checks if failed]


def update_rule(cfg: RunConfig) -> UpdateRule:
    if cfg.client.optimizer in ADAPTIVE:
        return AdaptiveRule(cfg.client.optimizer)
    if cfg.client.optimizer == "sgd":
        return SGDRule()
    return SGDRule(cfg.client.momentum, nesterov=cfg.client.optimizer == "nesterov")


def _step_limit(cfg: RunConfig, task: Task, plan: LocalPlan) -> int | bool | None:
    """The steps the client's virtual device leaves it (None: client.steps or its epochs),
    or False when the device's memory needs micro-batches (or fails the client)."""
    try:
        micro_batch, steps = device_limits(cfg, task.config, plan)
    except MemoryError:
        return False
    return False if micro_batch is not None else steps


def client_steps(task: Task, plan: LocalPlan, steps: int | None = None) -> ClientSteps:
    """The client's batches and LRs, drawn as the trainer draws them (same shuffle seed),
    for `steps` steps (default: client.steps, or the client's epochs)."""
    cfg = task.workload.cfg
    batches = list(
        batch_schedule(
            len(task.x),
            plan.batch_size,
            task.generator("shuffle"),
            epochs=cfg.client.epochs,
            steps=steps if steps is not None else cfg.client.steps,
            min_batch=2 if uses_batchnorm(task.model) else 1,  # as the trainer folds them
        )
    )
    steps = range(len(batches))
    lrs = [plan.lr_at(s) for s in steps] if plan.lr_at is not None else [plan.lr for _ in steps]
    return ClientSteps(task.x, task.y, batches, lrs, plan.weight_decay)


class VectorizedGrid(InProcessGrid):
    """The in-process Grid of run `cfg`, batching each round's eligible train messages."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg.num_clients)
        self.cfg = cfg
        self.batched = 0  # train messages answered by batched training, so far
        reasons = ineligible(cfg)
        if reasons:
            log.warning("engine=vectorized trains clients one by one: %s", "; ".join(reasons))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = [self._register(msg) for msg in messages]
        replies = self._train_together([m for m in messages if self._batchable(m)])
        for msg_id, msg in zip(ids, messages, strict=True):
            self._replies[msg_id] = replies[msg_id] if msg_id in replies else self._call(msg)
        return ids

    def _batchable(self, msg: Message) -> bool:
        if msg.metadata.message_type != MessageType.TRAIN:
            return False
        return not ineligible(self.cfg, msg.content["config"])

    def _train_together(self, messages: list[Message]) -> dict[str, Message]:
        """Replies by message id; none when batched training fails, so that the ClientApp
        answers each message (its error reply, if it fails too)."""
        if not messages:
            return {}
        try:
            replies = self._batched_replies(messages)
        except Exception:
            log.warning("batched training failed; the ClientApp trains one by one", exc_info=True)
            return {}
        self.batched += len(replies)
        return replies

    def _batched_replies(self, messages: list[Message]) -> dict[str, Message]:
        tasks, plans, starts, steps = [], [], [], []
        for msg in messages:
            task = setup_task(msg, self.contexts[msg.metadata.dst_node_id])
            plan = task.plan()
            limit = _step_limit(self.cfg, task, plan)
            # The ClientApp's reply for a client without data or one whose device splits
            # B into micro-batches (or fails on it).
            if len(task.x) and limit is not False:
                tasks.append((msg, task))
                plans.append(plan)
                steps.append(limit)
                # One model object holds each message's weights in turn: keep copies.
                own = [*task.model.named_parameters(), *task.model.named_buffers()]
                starts.append({key: value.detach().clone() for key, value in own})
        if not tasks:
            return {}
        model = tasks[0][1].model
        params, results = train_clients(
            model,
            stack_params(starts),
            [
                client_steps(task, plan, limit)
                for (_, task), plan, limit in zip(tasks, plans, steps, strict=True)
            ],
            update_rule(self.cfg),
            grad_norms=any(bool(task.config["grad-norms"]) for _, task in tasks),
        )
        state = model.state_dict()
        replies = {}
        for i, ((msg, task), plan, result) in enumerate(zip(tasks, plans, results, strict=True)):
            own = state | {key: value[i] for key, value in params.items()}
            if self.cfg.model.fedbn:
                save_local_norms(model, self.contexts[msg.metadata.dst_node_id], own)
            arrays = state_to_arrays(own)
            metrics = train_metrics(task, plan, result, {})
            content = RecordDict({"arrays": arrays, "metrics": metrics})
            replies[msg.metadata.message_id] = Message(content, reply_to=msg)
        return replies


def run(
    cfg: RunConfig, out_dir: Path, *, progress: bool, resume: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return run_experiment(VectorizedGrid(cfg), cfg, out_dir, progress=progress, resume=resume)
