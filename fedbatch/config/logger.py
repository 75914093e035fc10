"""Experiment trackers: where a run's rows, config and summary go besides metrics.jsonl.

Each tracker is a boolean, so the Hydra group `logger` can choose several at once
(`logger=[tensorboard,mlflow]`: each option's YAML sets its own key to true).
"""

from __future__ import annotations

from pydantic.dataclasses import dataclass

from fedbatch.config.schema import SECTION, Bool, Str, key

TRACKERS = ("tensorboard", "mlflow", "csv")
TRACK_EXTRA = "pip install 'fedbatch[track]'"


@dataclass(frozen=True, config=SECTION)
class LoggerConfig:
    tensorboard: Bool = key(False, doc="TensorBoard event files in <run dir>/tensorboard")
    mlflow: Bool = key(False, doc="an MLflow run: params, metrics, summary, the final model")
    csv: Bool = key(False, doc="metrics.csv: metrics.jsonl's rows as a table")
    mlflow_uri: Str | None = key(
        None, doc="MLflow tracking URI; null: sqlite:///<run dir>/mlflow.db"
    )
    mlflow_experiment: Str = key("fedbatch", doc="the MLflow experiment the run belongs to")

    @property
    def chosen(self) -> tuple[str, ...]:
        return tuple(name for name in TRACKERS if getattr(self, name))
