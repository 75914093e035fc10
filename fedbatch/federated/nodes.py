"""Which node holds which partition, whatever the engine.

Simulation engines number their nodes in partition order. In a deployment, node ids are
random and each SuperNode's partition comes from its own `--node-config`, so the server
waits for the SuperNodes to connect and asks each one (a `query.describe` message). Either
way the round loop sees a Grid that lists its nodes in partition order: index i holds
partition i.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedbatch.compat import ErrorCode, Run
from fedbatch.config import RunConfig
from fedbatch.federated.timing import server_exchange

DESCRIBE = f"{MessageType.QUERY}.describe"
POLL_SECONDS = 0.2  # between looks for SuperNodes
# Between pulls of replies: a round waits half of it on average after its last reply,
# and a pull is one small request to the SuperLink.
REPLY_POLL_SECONDS = 0.05


class GridView(Grid):
    """A Grid that passes everything to the engine's Grid; subclasses change what they list."""

    def __init__(self, grid: Grid) -> None:
        self.inner = grid

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)


class PartitionedGrid(GridView):
    """The engine's Grid listing its nodes in partition order.

    A reply that does not come within `timeout` seconds (a SuperNode died, say) becomes an
    error reply, so the round goes on with the others and counts the failure.
    """

    def __init__(self, grid: Grid, order: Sequence[int], timeout: float | None) -> None:
        super().__init__(grid)
        self.order, self.timeout = order, timeout

    def get_node_ids(self) -> Sequence[int]:
        return self.order

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        timeout = timeout or self.timeout
        sent = list(messages)
        if timeout is None:
            # In the order sent, whatever the order of arrival (Ray's actors finish in any):
            # aggregation sums in one order, so every engine gives the same numbers.
            order = [message.metadata.dst_node_id for message in sent]
            replies = list(self.inner.send_and_receive(sent))
            return sorted(replies, key=lambda reply: order.index(reply.metadata.src_node_id))
        for message in sent:  # expired, a late message is not started and a late reply dropped
            message.metadata.ttl = timeout
        sent_at = time.time()
        ids = list(self.inner.push_messages(sent))
        pending = set(ids)
        replies: list[Message] = []
        arrived: dict[str, float] = {}  # reply times, for `timing`
        deadline = time.monotonic() + timeout
        # Our own polling: Flower's sleeps 3 s between pulls, which a round pays each time.
        while pending and time.monotonic() < deadline:
            pulled = list(self.inner.pull_messages([i for i in ids if i in pending]))
            replies += pulled
            answered = {reply.metadata.reply_to_message_id for reply in pulled}
            arrived |= dict.fromkeys(answered, time.time())
            pending -= answered
            if pending and not pulled:
                time.sleep(REPLY_POLL_SECONDS)
        if sent:
            server_exchange(sent_at, sent[0].metadata.message_type, arrived)
        # In the order sent, whatever the order of arrival: aggregation sums in one order.
        position = {message_id: i for i, message_id in enumerate(ids)}
        replies.sort(key=lambda reply: position[reply.metadata.reply_to_message_id])
        reason = f"no reply within engine.round_timeout={timeout:g} s"
        return replies + [
            Message(Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason), reply_to=m)
            for m in sent
            if m.metadata.message_id in pending
        ]


def wait_for_nodes(
    grid: Grid, count: int, timeout: float, nodes_are: str = "SuperNodes connected"
) -> Sequence[int]:
    """The connected node ids, once at least `count` are connected (a range stays one:
    no list of a million registered ids)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = grid.get_node_ids()
        nodes = listed if isinstance(listed, range) else list(listed)
        if len(nodes) >= count:
            return nodes
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"only {len(nodes)} of num_clients={count} {nodes_are} within "
                f"engine.node_timeout={timeout:g} s"
            )
        time.sleep(POLL_SECONDS)


def describe_nodes(
    grid: Grid, nodes: Sequence[int], timeout: float
) -> tuple[dict[int, int], list[str]]:
    """Ask each node for its `partition-id`: node id → partition id, and the errors of
    the nodes that could not say."""
    messages = [
        grid.create_message(RecordDict({"config": ConfigRecord()}), DESCRIBE, node, "describe")
        for node in nodes
    ]
    found, errors = {}, []
    for reply in PartitionedGrid(grid, nodes, timeout).send_and_receive(messages):
        if reply.has_error():
            errors.append(reply.error.reason)
        else:
            found[reply.metadata.src_node_id] = int(reply.content["metrics"]["partition-id"])
    return found, errors


def partition_order(grid: Grid, cfg: RunConfig) -> Sequence[int]:
    """Node ids such that index i holds partition i."""
    if cfg.engine.name != "deployment":
        # Flower's simulation registers its nodes while the ServerApp starts: wait for all.
        nodes_are = "simulated nodes registered"
        nodes = wait_for_nodes(grid, cfg.num_clients, cfg.engine.node_timeout, nodes_are)
        ascending = isinstance(nodes, range) and nodes.step == 1
        return nodes if ascending else sorted(nodes)
    nodes = wait_for_nodes(grid, cfg.num_clients, cfg.engine.node_timeout)
    partition_of, errors = describe_nodes(grid, nodes, cfg.engine.node_timeout)
    holders: dict[int, int] = {}
    for node, partition in sorted(partition_of.items()):
        if not 0 <= partition < cfg.num_clients or partition in holders:
            raise RuntimeError(
                f"SuperNode {node} has partition-id={partition}: each of partitions "
                f"0..{cfg.num_clients - 1} (num_clients) must be held by one SuperNode"
            )
        holders[partition] = node
    missing = sorted(set(range(cfg.num_clients)) - set(holders))
    if missing:
        cause = f" ({errors[0]})" if errors else ""
        raise RuntimeError(f"no SuperNode answered for partition-id {missing}{cause}")
    return [holders[p] for p in range(cfg.num_clients)]


class _RangePositions(Mapping[int, int]):
    """The index of each node id in a range of ids, without a dict of them all."""

    def __init__(self, order: range) -> None:
        self.order = order

    def __getitem__(self, node: int) -> int:
        if node not in self.order:
            raise KeyError(node)
        return self.order.index(node)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def partition_positions(order: Sequence[int]) -> Mapping[int, int]:
    """Node id → partition id, for nodes listed in partition order."""
    if isinstance(order, range):
        return _RangePositions(order)
    return {node: i for i, node in enumerate(order)}
