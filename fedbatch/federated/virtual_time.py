"""The server's virtual time and clock: who is on which device, what each round costs.

The math is in `fedbatch.clock` (no Flower); this adapts it to the round loop: how many
clients to select, each client's per-round limits (memory, deadline), and which replies
arrive in time to be aggregated. `VirtualTime` is the one owner of a run's virtual seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message

from fedbatch.clock.availability import crash_point, is_available
from fedbatch.clock.devices import ClientDevices
from fedbatch.clock.network import transfer_seconds
from fedbatch.clock.scheduler import ClientTiming, client_timing, partial_steps, schedule_round
from fedbatch.config import FULL_BATCH, RunConfig
from fedbatch.local.batch_sizing import DeviceLimit, device_batch_size

ROW_KEYS = (
    "round_virtual_seconds", "clients_dropped", "clients_unavailable", "clients_crashed",
    "energy_joules", "staleness_mean", "staleness_max",
)  # fmt: skip


def record_bytes(arrays: ArrayRecord) -> int:
    """The size of the serialized weights: what a download or an upload carries."""
    return sum(len(array.data) for array in arrays.values())


class RoundClock:
    """The device, network and availability model; it keeps no time of its own."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.clock = cfg, cfg.clock
        self.device_of = ClientDevices(
            cfg.clock.devices, cfg.num_clients, cfg.clock.spread, cfg.seed
        )

    def select_count(self, wanted: int) -> int:
        """Over-selection: ⌈K(1 + o)⌉ clients for K updates, at most every client."""
        return min(self.cfg.num_clients, math.ceil(wanted * (1 + self.clock.over_selection)))

    def available(self, partition_id: int, server_round: int, now: float) -> bool:
        """Whether a selected client answers this round (dropout, diurnal night), at
        virtual time `now`."""
        clock = self.clock
        return is_available(
            self.cfg.seed,
            server_round,
            partition_id,
            now,
            dropout=clock.dropout,
            day_seconds=clock.day_seconds,
            night=clock.night,
        )

    def device_limit(self, partition_id: int) -> DeviceLimit | None:
        """What this client's device asks of B under `clock.batch_policy`: `memory`, its
        largest B that fits; `throughput`, its speed relative to the mean device."""
        policy, device = self.clock.batch_policy, self.device_of[partition_id]
        if policy == "memory":
            return DeviceLimit("memory", device.largest_batch())
        if policy == "throughput":
            mean = self.device_of.mean_throughput()
            return DeviceLimit("throughput", device.throughput / mean)
        return None

    def limits(self, partition_id: int, batch_size: int | str, model_bytes: int) -> dict[str, Any]:
        """Per-client values for a round: the device's say on B (`clock.batch_policy`,
        applied by the client's `choose_client_batch`), its memory limit on a pass, and the
        steps that fit a deadline or a time budget."""
        if self.clock.name == "real":  # real devices have their own limits
            return {}
        device = self.device_of[partition_id]
        limits: dict[str, Any] = {"max-batch": device.largest_batch()}
        wish = self.device_limit(partition_id)
        if wish is not None:
            limits |= {"device-batch-policy": wish.policy, "device-batch-value": wish.value}
        if batch_size == FULL_BATCH:
            return limits
        batch = int(batch_size) if wish is None else device_batch_size(int(batch_size), wish)
        timed = self.clock.policy == "deadline_partial" or self.clock.batch_policy == "equal_time"
        if timed:
            assert self.clock.deadline is not None
            # The passes the client will run: micro-batches that fit the device's memory.
            largest = device.largest_batch()
            split = self.clock.on_oom == "accumulate" and 0 < largest < batch
            pass_batch = largest if split else batch
            passes = math.ceil(self.cfg.client.accumulate * batch / pass_batch)
            steps = partial_steps(
                device,
                deadline=self.clock.deadline,
                batch_size=pass_batch,
                accumulate=passes,
                download=transfer_seconds(model_bytes, device.bandwidth_down, device.latency),
                upload=transfer_seconds(model_bytes, device.bandwidth_up, device.latency),
            )
            key = "exact-steps" if self.clock.batch_policy == "equal_time" else "max-steps"
            limits[key] = steps
        return limits

    def client_timing(self, partition_id: int, reply: Message, model_bytes: int) -> ClientTiming:
        """A replying client's virtual time and energy, from what it reports it did; with
        `clock=real`, its measured wall time (energy unknown: nan, written as null)."""
        metrics = reply.content["metrics"]
        if self.clock.name == "real":
            measured = float(metrics["client_seconds"])
            return ClientTiming(partition_id, 0.0, measured, 0.0, 0.0, math.nan)
        return client_timing(
            partition_id,
            self.device_of[partition_id],
            steps=int(metrics["steps"]),
            batch_size=int(metrics["pass_batch"]),
            accumulate=int(metrics["passes"]),
            download_bytes=model_bytes,
            upload_bytes=model_bytes,
            wait=float(metrics.get("wait_seconds", 0.0)),
        )

    def settle(
        self,
        server_round: int,
        replies: Sequence[Message],
        partition_of: Mapping[int, int],
        model_bytes: int,
        wanted: int,
    ) -> tuple[list[Message], dict[str, Any]]:
        """The replies that arrive in time to be aggregated, and the round's clock values
        (`round_virtual_seconds`: how far virtual time moves on). A client that crashes
        mid-round spent part of its compute (and energy) and sends nothing."""
        answered = [r for r in replies if not r.has_error()]
        ids = [partition_of[r.metadata.src_node_id] for r in answered]
        timings = [
            self.client_timing(i, r, model_bytes) for i, r in zip(ids, answered, strict=True)
        ]
        crashed_energy, crashed = 0.0, set()
        for timing in timings:
            point = crash_point(self.cfg.seed, server_round, timing.client, self.clock.crash)
            if point is not None:
                crashed.add(timing.client)
                crashed_energy += point * timing.energy
        idle = {
            i for i, r in zip(ids, answered, strict=True) if int(r.content["metrics"]["steps"]) == 0
        }
        timings = [t for t in timings if t.client not in crashed]
        policy = "deadline_drop" if self.clock.policy == "deadline_partial" else self.clock.policy
        schedule = schedule_round(
            timings, policy=policy, deadline=self.clock.deadline, wanted=wanted
        )
        kept = set(schedule.kept) - idle  # a client that did no step has nothing to add
        duration = schedule.duration
        if policy == "deadline_drop" and len(kept) < wanted:
            assert self.clock.deadline is not None  # the server cannot tell who crashed:
            duration = self.clock.deadline  # it waits for the deadline
        row = {
            "round_virtual_seconds": duration,
            "clients_dropped": len(schedule.dropped) + len(idle & set(schedule.kept)),
            "clients_crashed": len(crashed),
            "energy_joules": (
                math.nan  # a real device has no power model
                if self.clock.name == "real"
                else sum(t.energy for t in timings) + crashed_energy
            ),
        }
        return [r for i, r in zip(ids, answered, strict=True) if i in kept], row


class VirtualTime:
    """A run's virtual seconds, kept in one place.

    With a clock (`clock=devices|real`) a synchronous round moves time on by its duration
    (`RoundClock.settle`) and an asynchronous run to each arrival. With a stream and no
    clock every round lasts `stream.round_seconds`. Otherwise a run has no virtual time
    (`now` is None). The stream windows, the virtual time a round's clients may consume,
    follow from the same time.
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.clocked = cfg.clock.on
        self.streaming = cfg.stream.streaming
        self.seconds = 0.0
        self._window_end = 0.0

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "window_end": self._window_end}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.seconds, self._window_end = state["seconds"], state["window_end"]

    @property
    def now(self) -> float | None:
        return self.seconds if self.clocked or self.streaming else None

    def advance(self, seconds: float) -> None:
        self.seconds += seconds

    def advance_to(self, moment: float) -> None:
        self.seconds = moment

    def round_window(self) -> dict[str, float]:
        """A synchronous round's stream window: from where the last one ended to a round's
        length past now (without a clock: exactly one `stream.round_seconds`)."""
        if not self.streaming:
            return {}
        start = self._window_end
        end = max(start, self.seconds + self.cfg.stream.round_seconds)
        self._window_end = end
        return {"window-start": start, "window-end": end}

    def dispatch_window(self) -> dict[str, float]:
        """An asynchronous dispatch's window: a round's length from now."""
        if not self.streaming:
            return {}
        end = self.seconds + self.cfg.stream.round_seconds
        return {"window-start": self.seconds, "window-end": end}
