"""Set-up seconds, steady-state round seconds and peak RSS of one in-process run, timed
the way `fedbatch.bench`'s runner times the `scale` case, for whichever fedbatch
revision is first on `PYTHONPATH` (to compare main and a branch the same way):

    python -c "from fedbatch.bench.cases import SCALE; from fedbatch.bench.scale import \
scale_config; print(scale_config(SCALE, 'sync', 10**6, 100).to_json())" > run.json
    PYTHONPATH=/path/to/other/checkout python simulations/bench/scale_probe.py run.json

(A revision whose `run_engine` takes no `callbacks` is probed with its own copy of this
script: `git show REV:simulations/bench/scale_probe.py`.)

Prints one JSON line: `imports` (fedbatch, Flower, torch), `setup` (from after the
imports to the round-0 row), `rounds` (from each row to the next, rounds 1 to R) and
`rss_mb`.
"""

from __future__ import annotations

import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

began = time.perf_counter()

import fedbatch.engine.inprocess  # noqa: E402, F401  (imports are not set-up)
from fedbatch.config import config_from_json  # noqa: E402
from fedbatch.engine import run_engine  # noqa: E402
from fedbatch.metrics.callbacks import Callback, RoundState  # noqa: E402

ROW_TIMES: list[tuple[int, float]] = []


class _RowTimes(Callback):
    def on_round_end(self, state: RoundState) -> None:
        ROW_TIMES.append((state.round, time.perf_counter()))


def main(config_path: str) -> None:
    imported = time.perf_counter()
    cfg = config_from_json(Path(config_path).read_text())
    with tempfile.TemporaryDirectory() as out:
        run_engine(cfg, Path(out), progress=False, callbacks=[_RowTimes()])
    ends = [t for server_round, t in ROW_TIMES if server_round > 0]
    result = {
        "imports": imported - began,
        "setup": ROW_TIMES[0][1] - imported,
        "rounds": [later - earlier for earlier, later in itertools.pairwise(ends)],
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
