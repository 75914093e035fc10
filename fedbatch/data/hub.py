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

import re
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
    datasets.disable_progress_bars()
    try:
        loaded = _load(place, path)
    except Exception as error:  # the library's reasons are many; its first line says which
        raise ConfigError("data.path", path, f"{FORMS} ({one_line(error)})") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


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
