"""Checks across sections for the text task (`data=text`, `model=gru|transformer`)."""

from __future__ import annotations

from typing import Any

from fedbatch.checks import ConfigError
from fedbatch.config.sections import SEQUENCE_MODELS

TEXT_DATASETS = ("text",)  # token rows with per-position targets


def check_sequences(cfg: Any) -> None:
    """A text run needs a causal language model and a static dataset, and the reverse."""
    text = cfg.data.name in TEXT_DATASETS
    sequence_model = cfg.model.target is None and cfg.model.name in SEQUENCE_MODELS
    if text and not sequence_model:
        allowed = f"one of {', '.join(SEQUENCE_MODELS)} with data={cfg.data.name}"
        raise ConfigError("model", cfg.model.name, allowed)
    if sequence_model and not text:
        allowed = f"a classifier (not {', '.join(SEQUENCE_MODELS)}) with data={cfg.data.name}"
        raise ConfigError("model", cfg.model.name, allowed + "; they need data=text")
    if text and cfg.data.column is not None and cfg.data.path is None:
        raise ConfigError("data.column", cfg.data.column, "null unless data.path is set")
    if cfg.client.bucket_by_length and not text:
        raise ConfigError("client.bucket_by_length", True, "false unless data=text")
    if text and cfg.stream.streaming:
        raise ConfigError("stream", cfg.stream.name, "static with data=text")
    if cfg.model.name == "transformer" and cfg.model.width % cfg.model.heads:
        allowed = f"a divisor of model.width={cfg.model.width}"
        raise ConfigError("model.heads", cfg.model.heads, allowed)
    if cfg.monitor.noise_exact and cfg.model.name == "gru":
        allowed = (
            "0 with model=gru (torch.func's vmap cannot take per-example gradients through "
            "nn.GRU; model=transformer has them)"
        )
        raise ConfigError("monitor.noise_exact", cfg.monitor.noise_exact, allowed)
