"""Text as next-character prediction: a generated corpus or the lines of a local file.

Any list of strings becomes a task (`encode_texts`): each string is one sequence, or, when
longer than `data.max_length` characters, consecutive pieces of it (`pieces`). The
vocabulary is the characters of the whole corpus, sorted, after two special ids: PAD (0,
filling rows after their end) and BOUNDARY (1, the sequence's start as input and its end
as target). A sequence of n characters c_1..c_n is a row of n + 1 positions:

    inputs  [BOUNDARY, c_1, ..., c_n, PAD, ...]      (x, int64, PAD = 0)
    targets [c_1, ..., c_n, BOUNDARY, -100, ...]     (y, int64, -100: padding, ignored)

so a causal model predicts each next character and the end, and the loss and accuracy
count real tokens only (`ignore_index=-100`, PyTorch's default). A longer line's n + 1
(input, target) pairs are cut into rows of `data.max_length` + 1 positions: each piece's
last target is the true next character (the next piece's first input), and only the
line's last piece ends with BOUNDARY. Rows are padded to the longest row of the corpus;
training trims each batch to its own longest row.

The generated corpus (`data.path` null) is English-like sentences from a small grammar,
seeded: `det adj* noun verb det adj* noun (prep det adj* noun)* .`, with 0-6
prepositional phrases, so lengths spread from about 20 to 150 characters. Within a word
the next character is nearly certain, between words the grammar narrows the choice: a
small recurrent model learns much of it in a few rounds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from fedbatch.checks import ConfigError
from fedbatch.config import DataConfig
from fedbatch.data.datasets import Arrays, _random_split

PAD, BOUNDARY, IGNORE_INDEX = 0, 1, -100
SPECIAL_TOKENS = 2

DETERMINERS = ("the", "a", "every", "some", "no")
ADJECTIVES = ("big", "small", "red", "old", "quick", "lazy", "green", "quiet")
NOUNS = ("cat", "dog", "bird", "fox", "mouse", "horse", "tree", "river", "house", "child")
VERBS = ("sees", "chases", "likes", "finds", "follows", "hears", "watches")
PREPOSITIONS = ("near", "under", "behind", "over", "with", "beside")
MAX_PHRASES = 6


def _longest(words: Sequence[str]) -> int:
    return max(map(len, words))


_NOUN_PHRASE = _longest(DETERMINERS) + 2 * (1 + _longest(ADJECTIVES)) + 1 + _longest(NOUNS)
LONGEST_GENERATED = (  # characters of the longest sentence the grammar can make
    2 * _NOUN_PHRASE + _longest(VERBS) + 2
    + MAX_PHRASES * (_longest(PREPOSITIONS) + _NOUN_PHRASE + 2) + 1
)  # fmt: skip


def generated_sentences(count: int, rng: np.random.Generator) -> list[str]:
    """`count` sentences of the built-in grammar, drawn from `rng`."""

    def pick(words: Sequence[str]) -> str:
        return words[int(rng.integers(len(words)))]

    def noun_phrase() -> str:
        adjectives = [pick(ADJECTIVES) for _ in range(int(rng.integers(3)))]
        return " ".join([pick(DETERMINERS), *adjectives, pick(NOUNS)])

    sentences = []
    for _ in range(count):
        words = [noun_phrase(), pick(VERBS), noun_phrase()]
        for _ in range(int(rng.integers(MAX_PHRASES + 1))):
            words += [pick(PREPOSITIONS), noun_phrase()]
        sentences.append(" ".join(words) + ".")
    return sentences


def read_lines(path: str, limit: int) -> list[str]:
    """The first `limit` non-empty lines of a UTF-8 text file, without line ends."""
    file = Path(path).expanduser()
    try:
        with file.open(encoding="utf-8") as handle:
            lines = []
            for line in handle:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                    if len(lines) == limit:
                        break
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("data.path", path, f"a readable UTF-8 text file ({error})") from None
    if len(lines) < 2:
        raise ConfigError("data.path", path, "a text file with at least 2 non-empty lines")
    return lines


def vocabulary(texts: Sequence[str]) -> dict[str, int]:
    """Each character of the corpus, sorted, to its id (after the special ids)."""
    chars = sorted(set("".join(texts)))
    return {char: SPECIAL_TOKENS + i for i, char in enumerate(chars)}


def pieces(ids: Sequence[int], max_length: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) of one line's rows: its len(ids) + 1 next-character pairs in
    consecutive windows of `max_length` + 1, so no pair is lost or invented at a cut."""
    inputs, targets = [BOUNDARY, *ids], [*ids, BOUNDARY]
    window = max_length + 1
    for start in range(0, len(inputs), window):
        yield inputs[start : start + window], targets[start : start + window]


def encode_texts(
    texts: Sequence[str], max_length: int, vocab: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(inputs, targets, vocabulary size) of the strings, longer ones in pieces of
    `max_length` characters (`pieces`)."""
    vocab = vocab or vocabulary(texts)
    rows = [row for t in texts for row in pieces([vocab[c] for c in t], max_length)]
    width = max(len(inputs) for inputs, _ in rows)
    x = np.full((len(rows), width), PAD, dtype=np.int64)
    y = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for row, (inputs, targets) in enumerate(rows):
        x[row, : len(inputs)] = inputs
        y[row, : len(targets)] = targets
    return x, y, SPECIAL_TOKENS + len(vocab)


def read_column(path: str, split_name: str, column: str, limit: int) -> list[str]:
    """The first `limit` non-empty strings of a dataset's column (`data.column`), the
    dataset opened as `data=hf` opens it."""
    from fedbatch.data.hub import open_splits, split

    train = split(open_splits(path), "data.split", split_name)
    if column not in train.column_names:
        raise ConfigError(
            "data.column", column, "one of the columns " + ", ".join(train.column_names)
        )
    if train.features[column].dtype not in ("string", "large_string"):
        raise ConfigError("data.column", column, "a column of strings")
    values = train.select_columns([column])[column]
    texts = [value for value in values if value and value.strip()][:limit]
    if len(texts) < 2:
        raise ConfigError("data.column", column, "a column with at least 2 non-empty strings")
    return texts


def corpus(cfg: DataConfig, rng: np.random.Generator) -> list[str]:
    """The strings of the `text` dataset: generated from `rng`, a file's lines or a column."""
    if cfg.path is None:
        return generated_sentences(cfg.num_samples, rng)
    if cfg.column is not None:
        return read_column(cfg.path, cfg.split, cfg.column, cfg.num_samples)
    return read_lines(cfg.path, cfg.num_samples)


def text(cfg: DataConfig, seed: int) -> Arrays:
    """The `text` dataset: the generated corpus, the lines of `data.path`, or its column
    `data.column`."""
    rng = np.random.default_rng(seed)
    return text_task(corpus(cfg, rng), cfg, rng)


def text_task(texts: Sequence[str], cfg: DataConfig, rng: np.random.Generator) -> Arrays:
    """Any strings (a file's lines, a Hugging Face text column) as the next-character task:
    encoded with `data.max_length`, split with a seeded random `data.test_fraction`."""
    x, y, vocab_size = encode_texts(texts, cfg.max_length)
    return *_random_split(x, y, cfg, rng), vocab_size


def run_vocabulary(cfg: DataConfig, seed: int) -> dict[str, int]:
    """The char → id mapping a run of this data config and seed trained with."""
    return vocabulary(corpus(cfg, np.random.default_rng(seed)))


def text_in_vocabulary(cfg: DataConfig, seed: int, vocab: dict[str, int], width: int) -> Arrays:
    """The `text` dataset of `cfg` encoded with a trained model's vocabulary and row width
    (another text to evaluate it on); a character outside the vocabulary is refused,
    since it has no unknown id."""
    rng = np.random.default_rng(seed)
    texts = corpus(cfg, rng)
    missing = sorted(set("".join(texts)) - vocab.keys())
    if missing:
        shown = " ".join(map(repr, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ConfigError(
            "data.path",
            cfg.path,
            f"text in the run's vocabulary of {len(vocab)} characters: this one holds "
            f"{len(missing)} character(s) outside it ({shown})",
        )
    x, y, _ = encode_texts(texts, min(cfg.max_length, width - 1), vocab)
    padding = ((0, 0), (0, width - x.shape[1]))
    x = np.pad(x, padding, constant_values=PAD)
    y = np.pad(y, padding, constant_values=IGNORE_INDEX)
    return *_random_split(x, y, cfg, rng), SPECIAL_TOKENS + len(vocab)


def partition_labels(y: np.ndarray) -> np.ndarray:
    """What label-skewed partitions split by: the label, or a sequence's first target
    (its first character)."""
    return y if y.ndim == 1 else y[:, 0]
