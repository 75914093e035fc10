"""When a run's state is saved, and what a resumed run takes back (`save.*`, `resume=`).

The round loop hands the `Checkpointer` its state after every completed round (round 0 too,
the initial model); it keeps the latest in memory, cheaply (references to the records a
round replaces rather than mutates), and writes it to `checkpoint.pt` every `save.every`
rounds and when the run is interrupted. A run that ends otherwise removes the checkpoint:
its summary says how it ended, and there is nothing left to resume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flwr.app import RecordDict

from fedbatch.config import RunConfig
from fedbatch.federated.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_random_state,
    random_state,
    save_checkpoint,
    save_model_file,
)
from fedbatch.federated.records import array_to_tensor
from fedbatch.metrics.callbacks import Callback, RunOutcome
from fedbatch.run_dir import CHECKPOINT, MODEL_FILE

if TYPE_CHECKING:
    from fedbatch.federated.workload import Workload

# model.safetensors' header key of a text model's characters, in id order from SPECIAL_TOKENS.
VOCABULARY_KEY = "vocabulary"
WIDTH_KEY = "row_width"  # its rows' length: a Transformer's positions


@runtime_checkable
class ClientStates(Protocol):
    """A Grid whose nodes' `context.state` this process holds (the in-process engines)."""

    def client_states(self) -> dict[int, RecordDict]: ...

    def load_client_states(self, states: Mapping[int, RecordDict]) -> None: ...


def client_state_keepers(cfg: RunConfig) -> list[str]:
    """The settings under which a client keeps state of its own across rounds (in its
    node's `context.state`), which a checkpoint must hold to resume exactly."""
    kept = []
    if cfg.stream.streaming:
        kept.append(f"stream={cfg.stream.name} (what has arrived)")
    if cfg.client.optimizer_state == "keep":
        kept.append("client.optimizer_state=keep")
    if cfg.model.fedbn:
        kept.append("model.fedbn=true (local BatchNorm layers)")
    return kept


class Checkpointer:
    """Keeps a run's latest state; writes it every `every` rounds (0: only on `write`)."""

    def __init__(
        self, path: Path | None, every: int, clients: ClientStates | None, config: str = ""
    ) -> None:
        self.path, self.every, self.clients, self.config = path, every, clients, config
        self.latest: dict[str, Any] | None = None

    @property
    def round(self) -> int:
        """The last completed round whose state is held (0 before any)."""
        return 0 if self.latest is None else int(self.latest["round"])

    def capture(self, server_round: int, server: dict[str, Any]) -> None:
        self.latest = {
            "config": self.config,  # the run's config as JSON: resume checks it is the same
            "round": server_round,
            "server": server,
            "clients": None if self.clients is None else self.clients.client_states(),
            "random": random_state(),
        }
        if self.every and server_round % self.every == 0:
            self.write()

    def write(self) -> None:
        if self.path is not None and self.latest is not None:
            save_checkpoint(self.path, self.latest)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def restore(self, checkpoint: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """Give the clients and the random streams back their saved state; the round and
        the server's state, for the loop to take back."""
        clients = checkpoint["clients"]
        if clients is not None:
            if self.clients is None:
                raise CheckpointError(
                    "the checkpoint holds the clients' state, which this engine's server "
                    "cannot give back to them: resume on engine=inprocess or vectorized"
                )
            self.clients.load_client_states(clients)
        load_random_state(checkpoint["random"])
        self.latest = dict(checkpoint)
        return int(checkpoint["round"]), checkpoint["server"]


def checkpointer_for(cfg: RunConfig, out_dir: Path | None, grid: object) -> Checkpointer:
    """No files without `out_dir`; the clients' states only where clients keep any."""
    clients = grid if isinstance(grid, ClientStates) and client_state_keepers(cfg) else None
    path = None if out_dir is None else out_dir / CHECKPOINT
    return Checkpointer(path, cfg.save.every, clients, cfg.to_json())


def run_checkpoint(run_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """The checkpoint `run_dir` holds, written under `cfg` (CheckpointError if not)."""
    state = load_checkpoint(run_dir / CHECKPOINT)
    if state["config"] != cfg.to_json():
        raise CheckpointError(
            f"resume={run_dir}: config.yaml is not the config its {CHECKPOINT} was written with"
        )
    return state


class FinalModelFile(Callback):
    """Writes the global model the run ends with to `model.safetensors`; a text model's
    vocabulary goes into its header (`VOCABULARY_KEY`), so the model reads text without
    the corpus it was trained on."""

    def __init__(self, path: Path, workload: Workload) -> None:
        self.path = path
        self.workload = workload

    def on_run_end(self, outcome: RunOutcome) -> None:
        if outcome.arrays is not None:
            tensors = {key: array_to_tensor(array) for key, array in outcome.arrays.items()}
            save_model_file(self.path, tensors, self._metadata())

    def _metadata(self) -> dict[str, str]:
        cfg = self.workload.cfg
        if cfg.data.name != "text":
            return {}
        from fedbatch.data.text import run_vocabulary

        chars = list(run_vocabulary(cfg.data, cfg.seed))
        width = self.workload.dataset.input_shape[0]
        return {VOCABULARY_KEY: json.dumps(chars), WIDTH_KEY: str(width)}


__all__ = [
    "MODEL_FILE",
    "VOCABULARY_KEY",
    "WIDTH_KEY",
    "Checkpointer",
    "FinalModelFile",
    "checkpointer_for",
    "run_checkpoint",
]
