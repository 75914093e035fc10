"""Small datasets of the user's own, written in each format fedbatch reads.

Every table has features `a`, `b`, a string label `kind` ("no" when a + b < 0, else
"yes") and a `writer` column (5 writers), so a test knows every value it will read back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS = 120
WRITERS = 5
TABLE_FORMATS = ("parquet", "csv", "json", "arrow")


def table(rows: int = ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    return {
        "a": a,
        "b": b,
        "kind": np.where(a + b < 0, "no", "yes"),
        "writer": np.arange(rows) % WRITERS * 10 + 7,  # ids 7, 17, ..., 47
    }


def write_table(directory: Path, form: str, columns: dict[str, np.ndarray]) -> Path:
    """`columns` as a .parquet/.csv/.jsonl file or an arrow directory (save_to_disk)."""
    import datasets
    import pandas as pd

    frame = pd.DataFrame(columns)
    if form == "arrow":
        path = directory / "arrow"
        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(path))
        return path
    path = directory / f"data.{'jsonl' if form == 'json' else form}"
    if form == "parquet":
        frame.to_parquet(path)
    elif form == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def write_images(directory: Path, per_class: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """An image folder of 4x4 RGB PNGs in classes `bright` and `dark`; the pixels by class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = {}
    for name, low in (("bright", 128), ("dark", 0)):
        (directory / name).mkdir(parents=True)
        pixels[name] = rng.integers(low, low + 128, size=(per_class, 4, 4, 3), dtype=np.uint8)
        for i, image in enumerate(pixels[name]):
            Image.fromarray(image).save(directory / name / f"{i}.png")
    return pixels
