"""The in-process engine: a Flower Grid that calls the ClientApp directly.

No Ray, no SuperLink, no polling: `send_and_receive` runs each client's ClientApp in this
process, one after another, and returns its reply. Real Flower messages, strategies and
ClientApp pass through unchanged, so the result equals the Ray engine's for the same seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedbatch.compat import ErrorCode, Run, set_message_id, set_sender_identity
from fedbatch.config import RunConfig
from fedbatch.federated.client_app import app as default_client_app
from fedbatch.federated.server_app import run_experiment
from fedbatch.metrics.callbacks import Callback

RUN_ID = 1


class NodeContexts(Mapping[int, Context]):
    """Node id → its Flower Context, each built the first time it is asked for: a run
    with a million registered nodes builds only those of the clients it samples."""

    def __init__(self, num_nodes: int) -> None:
        self.node_ids = range(2, num_nodes + 2)  # id 1 is the SuperLink's own
        self.built: dict[int, Context] = {}

    def __getitem__(self, node_id: int) -> Context:
        context = self.built.get(node_id)
        if context is None:
            if node_id not in self.node_ids:
                raise KeyError(node_id)
            context = Context(
                run_id=RUN_ID,
                node_id=node_id,
                node_config={"partition-id": node_id - 2, "num-partitions": len(self.node_ids)},
                state=RecordDict(),
                run_config={},
            )
            self.built[node_id] = context
        return context

    def __iter__(self) -> Iterator[int]:
        return iter(self.node_ids)

    def __len__(self) -> int:
        return len(self.node_ids)


class InProcessGrid(Grid):
    """`num_nodes` virtual SuperNodes whose ClientApp runs in this process."""

    def __init__(self, num_nodes: int, client_app: ClientApp = default_client_app) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(RUN_ID)
        self.contexts = NodeContexts(num_nodes)
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}
        set_sender_identity(RUN_ID)  # the strategies' messages come from the SuperLink

    def client_states(self) -> dict[int, RecordDict]:
        """Each node's `context.state` that holds anything, copied shallowly: a client
        replaces the records in it, never changes one in place."""
        built = self.contexts.built  # a node never asked for has an empty state
        return {node: RecordDict(dict(c.state)) for node, c in built.items() if c.state}

    def load_client_states(self, states: Mapping[int, RecordDict]) -> None:
        for node in self.contexts.built.keys() | states.keys():
            self.contexts[node].state = RecordDict(dict(states.get(node, {})))

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> range:
        return self.contexts.node_ids

    def _call(self, msg: Message) -> Message:
        try:
            return self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # a failing client is a counted failure, not a crash
            error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}")
            return Message(error, reply_to=msg)

    def _register(self, msg: Message) -> str:
        """Give `msg` its message id (a reply refers to it)."""
        msg_id = str(next(self._ids))
        set_message_id(msg, msg_id)
        return msg_id

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = self._register(msg)
            self._replies[msg_id] = self._call(msg)
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run(
    cfg: RunConfig,
    out_dir: Path,
    *,
    progress: bool,
    resume: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    grid = InProcessGrid(cfg.num_clients)
    return run_experiment(grid, cfg, out_dir, progress=progress, resume=resume, callbacks=callbacks)
