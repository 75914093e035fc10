"""The run configuration: validated, frozen dataclasses built once from Hydra's config.

The schema (each key's type, range, default and meaning) is the sections' fields;
`python -m fedbatch.config` lists them.
"""

from fedbatch.checks import ConfigError
from fedbatch.config.clock import ClockConfig
from fedbatch.config.run import DEVICES, RunConfig, build_config, config_from_json
from fedbatch.config.sections import (
    DATASETS,
    ENGINES,
    MODELS,
    NORMS,
    PARTITIONS,
    STRATEGIES,
    DataConfig,
    EngineConfig,
    EvalConfig,
    ModelConfig,
    PartitionConfig,
    StopConfig,
    StrategyConfig,
)
from fedbatch.config.stream import StreamConfig
from fedbatch.config.training import (
    FULL_BATCH,
    OPTIMIZERS,
    BatchConfig,
    ClientConfig,
    MonitorConfig,
)

__all__ = [
    "DATASETS", "DEVICES", "ENGINES", "FULL_BATCH", "MODELS", "NORMS", "OPTIMIZERS",
    "PARTITIONS", "STRATEGIES", "BatchConfig", "ClientConfig", "ClockConfig", "ConfigError",
    "DataConfig",
    "EngineConfig", "EvalConfig", "ModelConfig", "MonitorConfig", "PartitionConfig",
    "RunConfig", "StopConfig", "StrategyConfig", "StreamConfig", "build_config", "config_from_json",
]  # fmt: skip
