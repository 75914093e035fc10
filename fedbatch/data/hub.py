"""Opening `data.path` as Hugging Face datasets, one per split, whatever its form.

- a directory written by `save_to_disk` (it holds `dataset_dict.json` or `state.json`):
  `datasets.load_from_disk`;
- another directory: `datasets.load_dataset(directory)`, which infers the builder from
  the files (parquet, csv, json, or `imagefolder` for class sub-folders of images) and
  the splits from their names (`train*`, `test*`; else one `train` split);
- a .parquet, .csv, .json or .jsonl file: that builder, one `train` split;
- anything else that looks like `name` or `owner/name`: a Hub id, downloaded by
  `datasets.load_dataset` (only where the machine reaches the Hub; never in tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import datasets

from fedbatch.checks import ConfigError
from fedbatch.registry import one_line

BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
SAVED = ("dataset_dict.json", "state.json")  # what `save_to_disk` leaves in its directory
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
FORMS = (
    "a .parquet, .csv, .json or .jsonl file, a directory of those, an arrow directory "
    "(save_to_disk), an image folder, or a Hub id"
)


def open_splits(path: str | None) -> dict[str, datasets.Dataset]:
    """The dataset at `path`, by split name; one line naming `data.path` if it fails."""
    if not path:
        raise ConfigError("data.path", path, FORMS)
    place = Path(path)
    if place.is_file() and place.suffix.lower() not in BUILDERS:
        raise ConfigError("data.path", path, FORMS + f" (not a {place.suffix or 'bare'} file)")
    local = path.startswith((".", "/", "~")) or place.suffix.lower() in BUILDERS
    if not place.exists() and (local or not HUB_ID.fullmatch(path)):
        raise ConfigError("data.path", path, FORMS + " (no such file or directory)")
    hub_id = not place.exists()
    if hub_id and _offline():
        raise ConfigError("data.path", path, FORMS + f" (no local path {path!r}, and the Hub "
                          "is offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)")  # fmt: skip
    datasets.disable_progress_bars()
    try:
        with _quiet() if hub_id else contextlib.nullcontext():
            loaded = _load(place, path)
    except Exception as error:  # the library's reasons are many; its first line says which
        why = one_line(error)
        if hub_id:
            why = f"no local path {path!r}, and the Hub has no dataset {path!r}: {why}"
        raise ConfigError("data.path", path, f"{FORMS} ({why})") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The Hub libraries' retry warnings off while a name is tried as a Hub id: a
    mistyped local directory ends in one line, not a dozen."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets", "fsspec")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load(place: Path, path: str) -> datasets.Dataset | datasets.DatasetDict:
    if place.is_dir() and any((place / name).is_file() for name in SAVED):
        return datasets.load_from_disk(str(place))
    if place.is_dir():
        return datasets.load_dataset(str(place))
    if place.is_file():
        return datasets.load_dataset(BUILDERS[place.suffix.lower()], data_files=str(place))
    return datasets.load_dataset(path)  # a Hub id


def split(splits: dict[str, datasets.Dataset], key: str, name: str) -> datasets.Dataset:
    if name not in splits:
        raise ConfigError(key, name, "one of the dataset's splits " + ", ".join(sorted(splits)))
    return splits[name]
