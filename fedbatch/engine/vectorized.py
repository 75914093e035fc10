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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict

from fedbatch.config import RunConfig
from fedbatch.data.stream_rounds import StreamRound
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.client_app import (
    LOCAL_NORMS,
    Task,
    device_limits,
    local_norms_record,
    setup_task,
)
from fedbatch.federated.client_metrics import train_metrics, with_stream
from fedbatch.federated.client_stream import STATE, stream_batches, stream_state_record
from fedbatch.federated.records import state_to_arrays
from fedbatch.federated.server_app import run_experiment
from fedbatch.local.minibatches import batch_schedule
from fedbatch.local.plan import LocalPlan
from fedbatch.local.stacked_optim import ADAPTIVE, AdaptiveRule, SGDRule, UpdateRule
from fedbatch.local.trainer import uses_batchnorm
from fedbatch.local.vectorized import ClientSteps, stack_params, train_clients
from fedbatch.metrics.callbacks import Callback

log = logging.getLogger(__name__)
SGD_RULES = ("sgd", "momentum", "nesterov")
BATCHED_OPTIMIZERS = SGD_RULES + ADAPTIVE
GROUPED_MODELS = ("cnn", "cnn1d", "mlp")  # BatchNorm: per client, in `grouped.py`


def ineligible(cfg: RunConfig, config: Mapping[str, Any] | None = None) -> list[str]:
    """Why the train messages of run `cfg` (in a round told `config`) cannot be batched;
    empty when they can. BatchNorm is batched for the models `grouped.py` runs (FedBN too:
    each client's layers go to its context as the ClientApp saves them), not with ghost
    batches. Streams are batched over each round's planned batches (drifted where their
    concept says); `clock=real` measures each client's own time: ruled out below. The
    virtual clock's step limits are honoured; a client whose device splits B into
    micro-batches goes through the ClientApp, message by message. A kept optimizer state lives in
    the ClientApp's context.state, so every round of such a run goes through the ClientApp
    (batching some rounds would leave it stale). A `_target_` model may hold BatchNorm or
    dropout its config does not show: ruled out too."""
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
    return ClientSteps(task.x, task.y, batches, _step_lrs(plan, len(batches)), plan.weight_decay)


def streamed_steps(
    task: Task, plan: LocalPlan, steps: int | None, context: Context
) -> tuple[ClientSteps, StreamRound]:
    """The client's round on its stream, planned as the ClientApp plans it (its stream
    state is left for the caller to save): each step's rows, drifted where their concept
    says, laid end to end."""
    window = (float(task.config["window-start"]), float(task.config["window-end"]))
    planned, streamed = stream_batches(
        task.workload, task.partition_id, task.server_round, window, plan.effective_batch_size,
        steps, context, advance=False,
    )  # fmt: skip
    drifted = task.workload.cfg.stream.drift in ("covariate", "concept")
    xs, ys = [], []
    for batch in planned:
        x, y = task.x[batch.index], task.y[batch.index]
        if drifted and batch.concept is not None:
            x, y = task.workload.drift().apply(x, y, batch.concept)
        xs.append(x)
        ys.append(y)
    ends = torch.tensor([len(y) for y in ys]).cumsum(0).tolist()
    rows = [torch.arange(end - len(y), end) for end, y in zip(ends, ys, strict=True)]
    data = (torch.cat(xs), torch.cat(ys)) if planned else (task.x[:0], task.y[:0])
    fresh = [batch.fresh for batch in planned]
    lrs = _step_lrs(plan, len(planned))
    return ClientSteps(*data, rows, lrs, plan.weight_decay, fresh), streamed


def _lone_row_under_batchnorm(task: Task, steps: ClientSteps) -> bool:
    """A stream's step of one row in a BatchNorm model: the ClientApp's answer (an error
    for BatchNorm over features) for this client alone, not a failed batched round."""
    return uses_batchnorm(task.model) and any(len(batch) < 2 for batch in steps.batches)


def _step_lrs(plan: LocalPlan, steps: int) -> list[float]:
    if plan.lr_at is None:
        return [plan.lr] * steps
    return [plan.lr_at(s) for s in range(steps)]


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
        clients: list[BatchedClient] = []
        for msg in messages:
            context = self.contexts[msg.metadata.dst_node_id]
            task = setup_task(msg, context)
            plan = task.plan()
            limit = _step_limit(self.cfg, task, plan)
            # The ClientApp's reply for a client without data, one whose device splits
            # B into micro-batches (or fails on it), or one whose stream gives it no step.
            if not len(task.x) or limit is False:
                continue
            streamed = None
            if self.cfg.stream.streaming:
                steps, streamed = streamed_steps(task, plan, limit, context)
            else:
                steps = client_steps(task, plan, limit)
            if not steps.batches or _lone_row_under_batchnorm(task, steps):
                continue
            # One model object holds each message's weights in turn: keep copies.
            own = [*task.model.named_parameters(), *task.model.named_buffers()]
            start = {key: value.detach().clone() for key, value in own}
            clients.append(BatchedClient(msg, context, task, plan, steps, start, streamed))
        if not clients:
            return {}
        model = clients[0].task.model
        params, results = train_clients(
            model,
            stack_params([client.start for client in clients]),
            [client.steps for client in clients],
            update_rule(self.cfg),
            grad_norms=any(bool(client.task.config["grad-norms"]) for client in clients),
        )
        state = model.state_dict()
        replies = {}
        kept: list[tuple[Context, str, ArrayRecord]] = []  # what each context keeps
        for i, (client, result) in enumerate(zip(clients, results, strict=True)):
            own = state | {key: value[i] for key, value in params.items()}
            if self.cfg.model.fedbn:
                kept.append((client.context, LOCAL_NORMS, local_norms_record(model, own)))
            metrics = train_metrics(client.task, client.plan, result, {})
            if client.streamed is not None:
                record = stream_state_record(client.streamed.state)
                kept.append((client.context, STATE, record))
                metrics = with_stream(metrics, client.streamed, result)
            content = RecordDict({"arrays": state_to_arrays(own), "metrics": metrics})
            replies[client.msg.metadata.message_id] = Message(content, reply_to=client.msg)
        # Only once every reply is built: a failure before leaves each context as the
        # round found it, for the ClientApp that then answers.
        for context, key, record in kept:
            context.state[key] = record
        return replies


@dataclass(frozen=True)
class BatchedClient:
    """A train message answered by batched training: what its reply is built from."""

    msg: Message
    context: Context
    task: Task
    plan: LocalPlan
    steps: ClientSteps
    start: dict[str, torch.Tensor]  # its weights (and BatchNorm buffers) before the round
    streamed: StreamRound | None


def run(
    cfg: RunConfig,
    out_dir: Path,
    *,
    progress: bool,
    resume: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    grid = VectorizedGrid(cfg)
    return run_experiment(grid, cfg, out_dir, progress=progress, resume=resume, callbacks=callbacks)
