"""Small causal language models for the text task (pure torch).

Both map token rows (N, L) to logits (N, vocabulary, L), the layout `F.cross_entropy`
takes for per-position targets, so training, evaluation and the probes use the same loss
call as for classification. Both are causal: the output at position t depends on tokens
0..t only, so right padding never changes a real position's output, and a padded batch
gives the same loss as its sequences one by one (no packing needed).
"""

from __future__ import annotations

import torch
from torch import nn

from fedbatch.config import ModelConfig
from fedbatch.data.text import PAD


class GRULanguageModel(nn.Module):
    """Embedding → `layers` GRU layers of `width` → linear read-out per position."""

    def __init__(self, vocabulary: int, width: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width, padding_idx=PAD)
        self.gru = nn.GRU(
            width, width, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(self.embed(tokens))
        return self.head(self.drop(hidden)).transpose(1, 2)


class TransformerLanguageModel(nn.Module):
    """Token + learned position embeddings → `layers` pre-norm causal self-attention
    blocks (`heads` heads, feed-forward 4·`width`) → final norm → linear read-out."""

    def __init__(
        self,
        vocabulary: int,
        max_length: int,
        width: int,
        layers: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width, padding_idx=PAD)
        self.position = nn.Embedding(max_length, width)
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        hidden = self.embed(tokens) + self.position(positions)
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.blocks(hidden, mask=causal, is_causal=True)
        return self.head(self.norm(hidden)).transpose(1, 2)


def gru(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return GRULanguageModel(num_classes, cfg.width, cfg.layers, cfg.dropout)


def transformer(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if cfg.width % cfg.heads:
        raise ValueError(f"model.width={cfg.width} must be a multiple of model.heads={cfg.heads}")
    return TransformerLanguageModel(
        num_classes, input_shape[0], cfg.width, cfg.layers, cfg.heads, cfg.dropout
    )
