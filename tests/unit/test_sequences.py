"""The text task's pieces against hand computations: encoding, masked loss and accuracy,
padding and bucketing, and per-example gradients of the sequence models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.config import ConfigError, ModelConfig
from fedbatch.data.text import (
    BOUNDARY,
    IGNORE_INDEX,
    LONGEST_GENERATED,
    PAD,
    encode_texts,
    generated_sentences,
    text,
)
from fedbatch.local.minibatches import bucketed_batches, epoch_batches
from fedbatch.local.noise import exact_noise
from fedbatch.local.sequence_models import gru, transformer
from fedbatch.local.trainer import evaluate, train_local
from tests.conftest import tiny_config


def test_encoding_shifts_targets_and_pads_by_hand():
    x, y, vocabulary = encode_texts(["ab", "c", "bca"], max_length=2)
    # vocabulary: PAD 0, BOUNDARY 1, then a=2, b=3, c=4; "bca" is longer than 2: its 4
    # pairs (B→b, b→c, c→a, a→B) in rows of 3, the first ending on the true next "a"
    assert vocabulary == 5
    assert x.tolist() == [[1, 2, 3], [1, 4, 0], [1, 3, 4], [2, 0, 0]]
    assert y.tolist() == [[2, 3, 1], [4, 1, -100], [3, 4, 2], [1, -100, -100]]
    assert (PAD, BOUNDARY, IGNORE_INDEX) == (0, 1, -100)


def test_a_cut_line_predicts_its_true_next_characters():
    line = "the cat sat on the mat"  # 22 characters, cut at 5: pieces of 6 positions
    x, y, _ = encode_texts([line, "ox"], max_length=5)
    chars = {c: i for i, c in enumerate(sorted(set(line + "ox")), start=2)}
    ids = [chars[c] for c in line]
    # by hand: 23 pairs (B→t, t→h, ..., t→B) in windows of 6: 6 + 6 + 6 + 5
    assert len(x) == 5 and x.shape[1] == 6
    assert x[0].tolist() == [BOUNDARY, *ids[:5]] and y[0].tolist() == ids[:6]
    assert x[1].tolist() == ids[5:11] and y[1].tolist() == ids[6:12]
    assert x[2].tolist() == ids[11:17] and y[2].tolist() == ids[12:18]
    assert x[3].tolist() == [*ids[17:22], PAD] and y[3].tolist() == [*ids[18:22], BOUNDARY, -100]
    for piece in range(3):  # a piece's last target is the next piece's first character
        assert y[piece, -1] == x[piece + 1, 0] != BOUNDARY
    real = y[:4][y[:4] != IGNORE_INDEX].tolist()
    assert real == [*ids, BOUNDARY]  # every next character once, the end only at the end
    assert x[4, :3].tolist() == [BOUNDARY, chars["o"], chars["x"]]


def test_generated_corpus_is_seeded_and_spreads_lengths():
    first = generated_sentences(300, np.random.default_rng(5))
    assert first == generated_sentences(300, np.random.default_rng(5))
    assert first != generated_sentences(300, np.random.default_rng(6))
    lengths = [len(s) for s in first]
    assert min(lengths) < 40 and max(lengths) > 130  # padding matters
    # the bound the memory estimate uses: a noun phrase has at most 5 + 2·(1 + 5) + 1 + 5
    # = 23 characters ("every quick quiet mouse"), a verb 7, a preposition 6
    assert max(lengths) <= LONGEST_GENERATED == 2 * 23 + 7 + 2 + 6 * (6 + 23 + 2) + 1
    assert all(s.endswith(".") for s in first)


class TableModel(nn.Module):
    """logits[n, :, t] = table[x[n, t]]: a bigram model whose outputs are known."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens].transpose(1, 2)


def test_masked_loss_and_accuracy_match_a_hand_computation():
    table = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 3.0]])
    model = TableModel(table)
    x = torch.tensor([[1, 2, 2], [2, 1, 0]])  # second row: 2 real tokens, then padding
    y = torch.tensor([[2, 2, 1], [0, 1, IGNORE_INDEX]])

    def nll(row: list[float], target: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    rows = table.tolist()
    real = [(1, 2), (2, 2), (2, 1), (2, 0), (1, 1)]  # (input, target) of the real tokens
    loss = sum(nll(rows[i], t) for i, t in real) / 5
    correct = sum(max(range(3), key=lambda c: rows[i][c]) == t for i, t in real)
    assert correct == 2  # argmax after 1 is 1, after 2 is 2: (2, 2) and (1, 1) are right
    measured_loss, measured_accuracy = evaluate(model, x, y, batch_size=1)
    assert measured_loss == pytest.approx(loss, rel=1e-6)
    assert measured_accuracy == pytest.approx(2 / 5)


def _corpus(
    count: int, seed: int, longest: int = LONGEST_GENERATED
) -> tuple[torch.Tensor, torch.Tensor, int]:
    texts = generated_sentences(count, np.random.default_rng(seed))
    x, y, vocabulary = encode_texts(texts, max_length=longest)
    return torch.from_numpy(x), torch.from_numpy(y), vocabulary


@pytest.mark.parametrize("build", [gru, transformer])
def test_padding_does_not_change_the_loss(build):
    """A padded batch's loss equals the unpadded sequences' summed token losses, one by
    one, over their tokens; more padding changes nothing."""
    x, y, vocabulary = _corpus(6, seed=1)
    torch.manual_seed(0)
    model = build(ModelConfig(name=build.__name__), (x.shape[1] + 7,), vocabulary).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in range(len(x)):
            n = int((y[row] != IGNORE_INDEX).sum())
            logits = model(x[row : row + 1, :n])
            total += float(F.cross_entropy(logits, y[row : row + 1, :n], reduction="sum"))
            tokens += n
        padded = float(F.cross_entropy(model(x), y))
        wider_x = F.pad(x, (0, 7), value=PAD)
        wider_y = F.pad(y, (0, 7), value=IGNORE_INDEX)
        wider = float(F.cross_entropy(model(wider_x), wider_y))
    assert padded == pytest.approx(total / tokens, rel=1e-5)
    assert wider == pytest.approx(total / tokens, rel=1e-5)
    assert evaluate(model, wider_x, wider_y, batch_size=4)[0] == pytest.approx(total / tokens, 1e-5)


class Recorder(nn.Module):
    """Wraps a model and keeps every training input it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(tokens.clone())
        return self.inner(tokens)


def _train(x, y, vocabulary, bucket: bool, batch_size: int = 8, lr: float = 0.05):
    torch.manual_seed(0)
    model = Recorder(gru(ModelConfig(name="gru", width=16), (x.shape[1],), vocabulary))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    result = train_local(
        model,
        optimizer,
        x,
        y,
        generator=torch.Generator().manual_seed(3),
        batch_size=batch_size,
        epochs=1,
        bucket_by_length=bucket,
    )
    return model, result


def _padding_seen(batches: list[torch.Tensor]) -> float:
    real = sum(int((b != PAD).sum()) for b in batches)  # inputs: PAD only after the end
    return 1 - real / sum(b.numel() for b in batches)


def test_padding_fraction_by_hand_and_lower_with_bucketing():
    x, y, vocabulary = _corpus(48, seed=2)
    lengths = (y != IGNORE_INDEX).sum(dim=1)
    padding = {}
    for bucket in (False, True):
        model, result = _train(x, y, vocabulary, bucket)
        batches = model.seen
        # every batch is trimmed to its longest sequence
        assert all(int((b != PAD).sum(dim=1).max()) == b.shape[1] for b in batches)
        assert result.tokens == int(lengths.sum())  # one epoch: every token once
        assert result.steps == 6 and result.examples_seen == 48
        padding[bucket] = 1 - result.tokens / result.token_slots
        assert padding[bucket] == pytest.approx(_padding_seen(batches))
    # bucketed (one pool: 6 batches < 100): the sorted lengths cut into batches of 8
    ranked = sorted(lengths.tolist())
    chunks = [ranked[i : i + 8] for i in range(0, 48, 8)]
    by_hand = 1 - sum(ranked) / sum(8 * max(c) for c in chunks)
    assert padding[True] == pytest.approx(by_hand)
    assert padding[True] < padding[False] / 3, padding


def test_bucketed_epoch_uses_every_sample_once_in_batches_of_b():
    lengths = torch.tensor([5, 1, 9, 3, 3, 7, 2, 8, 6, 4, 1])
    generator = torch.Generator().manual_seed(0)
    batches = bucketed_batches(lengths, 4, generator, min_batch=2)
    plain = epoch_batches(11, 4, torch.Generator().manual_seed(0), min_batch=2)
    assert sorted(torch.cat(batches).tolist()) == list(range(11))
    assert sorted(len(b) for b in batches) == sorted(len(b) for b in plain) == [3, 4, 4]
    spans = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in batches)
    assert spans == [(1, 3), (3, 6), (7, 9)]  # sorted lengths 1 1 2 3 | 3 4 5 6 | 7 8 9


def test_training_loss_is_a_mean_over_real_tokens():
    """At lr≈0 the running training loss is the token-weighted mean of the batches' token
    means, i.e. the loss over all real tokens (a mean per sequence would differ)."""
    x, y, vocabulary = _corpus(24, seed=4)
    model, result = _train(x, y, vocabulary, bucket=True, batch_size=5, lr=1e-12)
    loss, accuracy = evaluate(model.inner, x, y)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.accuracy == pytest.approx(accuracy)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over attention
def test_exact_noise_refused_for_gru_and_by_hand_for_transformer():
    x, y, vocabulary = _corpus(4, seed=6)
    raw = {"data": {"name": "text"}, "model": {"name": "gru"}, "monitor": {"noise_exact": 1}}
    with pytest.raises(ConfigError, match=r"monitor\.noise_exact=1 .*allowed 0 with model=gru"):
        tiny_config(**raw)
    torch.manual_seed(0)
    recurrent = gru(ModelConfig(name="gru", width=8), (x.shape[1],), vocabulary)
    with pytest.raises(RuntimeError):  # what the refusal spares the user
        exact_noise(recurrent, F.cross_entropy, x, y)
    model = transformer(
        ModelConfig(name="transformer", width=8, heads=2), (x.shape[1],), vocabulary
    )
    model.eval()
    grads = []
    for row in range(len(x)):
        loss = F.cross_entropy(model(x[row : row + 1]), y[row : row + 1])
        grads.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
        )
    per_example = torch.stack(grads).double()
    mean = per_example.mean(0)
    trace = float((per_example - mean).pow(2).sum() / (len(x) - 1))
    grad_sq, measured_trace = exact_noise(model, F.cross_entropy, x, y)
    assert grad_sq == pytest.approx(float(mean.pow(2).sum()), rel=1e-4)
    assert measured_trace == pytest.approx(trace, rel=1e-4)


def test_a_generated_corpus_too_large_for_memory_is_refused():
    from fedbatch.sizes import check_data_fits

    cfg = tiny_config(data={"name": "text", "num_samples": 1000}, model={"name": "gru"})
    row_bytes = 2 * (LONGEST_GENERATED + 1) * 12  # input and target rows, as estimated
    check_data_fits(cfg, memory=1000 * row_bytes)
    with pytest.raises(ConfigError, match=r"data\.num_samples=1000 .*at most 999 for data=text"):
        check_data_fits(cfg, memory=1000 * row_bytes - 1)


def test_accumulated_micro_batches_weigh_by_real_tokens():
    """B = 4 with accumulate = 2 takes the same steps as B = 8: each micro-batch's token
    mean counts by its share of the step's real tokens (by rows it would not)."""
    x, y, vocabulary = _corpus(16, seed=7)
    weights = []
    for batch_size, accumulate in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = gru(ModelConfig(name="gru", width=8), (x.shape[1],), vocabulary)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        train_local(
            model,
            optimizer,
            x,
            y,
            generator=torch.Generator().manual_seed(1),
            batch_size=batch_size,
            accumulate=accumulate,
            epochs=1,
        )
        weights.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_a_sequence_model_too_large_is_refused_by_its_width():
    from fedbatch.sizes import BYTES_PER_PARAMETER, check_model_fits

    cfg = tiny_config(data={"name": "text"}, model={"name": "gru", "width": 8})
    # embedding 30·8, GRU 2·(3·8·8) weights + 2·3·8 biases, read-out 8·30 + 30
    parameters = 30 * 8 + 2 * 3 * 8 * 8 + 2 * 3 * 8 + 8 * 30 + 30
    check_model_fits(cfg, (50,), 30, memory=parameters * BYTES_PER_PARAMETER)
    with pytest.raises(ConfigError, match=r"model\.width=8 .*942 parameters"):
        check_model_fits(cfg, (50,), 30, memory=parameters * BYTES_PER_PARAMETER - 1)


def _text_arrays(**data) -> list[np.ndarray]:
    cfg = tiny_config(data={"name": "text", "num_samples": 40, **data}, model={"name": "gru"})
    return [np.asarray(part) for part in text(cfg.data, seed=5)]


def test_a_dataset_column_is_the_same_task_as_a_text_file_of_its_strings(tmp_path):
    import pandas as pd

    strings = [f"row {i}: " + "xyz" * (i % 5) for i in range(30)]
    frame = pd.DataFrame({"sentence": strings, "label": range(30)})
    frame.to_parquet(tmp_path / "corpus.parquet")
    (tmp_path / "corpus.txt").write_text("\n".join(strings) + "\n", encoding="utf-8")
    from_column = _text_arrays(path=str(tmp_path / "corpus.parquet"), column="sentence")
    from_file = _text_arrays(path=str(tmp_path / "corpus.txt"))
    assert len(from_column) == len(from_file) == 5  # x, y, x_test, y_test, vocabulary
    for column_part, file_part in zip(from_column, from_file, strict=True):
        np.testing.assert_array_equal(column_part, file_part)


def test_a_bad_text_column_is_one_line_naming_data_column(tmp_path):
    import pandas as pd

    pd.DataFrame({"sentence": ["ab", "cd"], "n": [1, 2]}).to_parquet(tmp_path / "c.parquet")
    path = str(tmp_path / "c.parquet")
    with pytest.raises(ConfigError, match=r"data.column='missing' is invalid: .*sentence"):
        _text_arrays(path=path, column="missing")
    with pytest.raises(
        ConfigError, match=r"data.column='n' is invalid: allowed a column of strings"
    ):
        _text_arrays(path=path, column="n")
    with pytest.raises(ConfigError, match=r"data.column='sentence' is invalid: .*null unless"):
        tiny_config(data={"name": "text", "column": "sentence"}, model={"name": "gru"})
