"""The benchmark compares equal work: the plain loop and the engines agree on accuracy."""

from __future__ import annotations

import json
import pstats

import pytest

from fedbatch.bench import __main__ as bench
from fedbatch.bench.cases import BenchCase
from fedbatch.bench.runners import RUNNERS
from fedbatch.bench.scale import bench_scale, scale_config
from fedbatch.federated.workload import workload_for

TINY = BenchCase(
    name="tiny",
    description="test",
    raw={
        "seed": 1,
        "rounds": 2,
        "num_clients": 4,
        "clients_per_round": 2,
        "data": {"name": "synthetic", "num_samples": 400, "alpha": 0.0, "beta": 0.0},
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"batch_size": 8, "steps": 5, "optimizer": "sgd", "lr": 0.1},
        "eval": {"every": 1000},
    },
)


def test_plain_loop_and_inprocess_engine_do_the_same_work():
    cfg = TINY.config()
    workload = workload_for(cfg.to_json())
    plain = RUNNERS["plain"](cfg, workload)
    inprocess = RUNNERS["inprocess"](cfg, workload)
    assert inprocess == pytest.approx(plain, abs=1e-9)


def test_vectorized_engine_does_the_plain_loops_work(monkeypatch):
    import fedbatch.bench.runners as runners
    import fedbatch.federated.evaluation as evaluation
    from fedbatch.local.trainer import evaluate

    # Compare the final models by their test loss (in the accuracy slot the runners return).
    monkeypatch.setattr(runners, "evaluate", lambda model, x, y: (0.0, evaluate(model, x, y)[0]))
    monkeypatch.setattr(
        evaluation, "evaluate", lambda model, x, y, size: (evaluate(model, x, y, size)[0],) * 2
    )
    # B=8 on 80 samples per client: equal batches; B=7: the 12th step ends an epoch with
    # 3 samples, so batches of unequal size are padded and masked.
    for batch_size, steps in ((8, 5), (7, 14)):
        client = {"batch_size": batch_size, "steps": steps, "optimizer": "sgd", "lr": 0.1}
        cfg = TINY.config(client=client)
        workload = workload_for(cfg.to_json())
        assert RUNNERS["vectorized"](cfg, workload) == pytest.approx(
            runners.plain(cfg, workload), rel=1e-5
        )


def test_accuracy_mismatch_is_reported():
    results = {
        "plain": {"accuracy": 0.80},
        "inprocess": {"accuracy": 0.80},
        "ray": {"accuracy": 0.5},
    }
    problems = bench.check_same_work(results)
    assert len(problems) == 1 and problems[0].startswith("ray")


@pytest.mark.slow
def test_bench_command_writes_table_and_json(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.CASES, "tiny", TINY)
    args = ["--case", "tiny", "--runners", "plain,inprocess", "--repeats", "1", "--profile"]
    code = bench.main([*args, "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    plain, inprocess = report["tiny"]["plain"], report["tiny"]["inprocess"]
    assert plain["ratio"] == 1.0
    assert inprocess["ratio"] == pytest.approx(inprocess["seconds"] / plain["seconds"])
    # Two rounds: one steady-state interval per run, end of round 1 to end of round 2.
    assert 0 < plain["round_seconds_median"] < plain["seconds"]
    assert plain["round_ratio"] == 1.0
    assert inprocess["round_ratio"] == pytest.approx(
        inprocess["round_seconds_median"] / plain["round_seconds_median"]
    )
    assert inprocess["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-9)
    assert inprocess["rss_mb"] > 50
    # --profile: one more run each under cProfile; the engine's shows Flower's client path.
    profiles = tmp_path / "profiles"
    plain_top = (profiles / "tiny-plain.txt").read_text()
    inprocess_top = (profiles / "tiny-inprocess.txt").read_text()
    assert "bare_local_sgd" in plain_top and "train_local" not in plain_top
    assert "train_local" in inprocess_top and "client_app.py" in inprocess_top
    assert pstats.Stats(str(profiles / "tiny-inprocess.prof")).total_calls > 1000


def test_scale_case_compares_each_registered_count_with_the_smallest():
    case = BenchCase(
        name="scale-tiny", description="test", raw=TINY.raw, registered=(32, 16), per_round=(2,)
    )
    round_seconds = {16: [0.5, 0.7], 32: [0.9, 0.9]}
    seen = []

    def run_once(runner, cfg):
        assert runner == "inprocess"
        seen.append((cfg.strategy.name, cfg.num_clients, cfg.data.num_samples))
        fedbuff = cfg.strategy.name == "fedbuff"
        return {
            "seconds": 1.0,
            "round_seconds": [2 * s if fedbuff else s for s in round_seconds[cfg.num_clients]],
            "setup_seconds": 3.0,
            "data_seconds": 1.0,
            "partition_seconds": 0.25,
            "rss_mb": 100.0,
            "accuracy": 0.5,
        }

    results = bench_scale(case, 1, run_once)
    # Smallest registered count first; one training sample per client after the 20% split.
    assert seen == [
        ("fedavg", 16, 20),
        ("fedavg", 32, 40),
        ("fedbuff", 16, 20),
        ("fedbuff", 32, 40),
    ]
    assert list(results) == ["sync@16/2", "sync@32/2", "fedbuff@16/2", "fedbuff@32/2"]
    for mode in ("sync", "fedbuff"):  # each mode against its own smallest registered count
        assert results[f"{mode}@16/2"]["round_ratio"] == 1.0
        assert results[f"{mode}@32/2"]["round_ratio"] == pytest.approx(0.9 / 0.6)
    assert results["fedbuff@32/2"]["round_seconds_median"] == pytest.approx(1.8)
    assert results["sync@32/2"]["partition_seconds"] == 0.25


def test_scale_case_runs_fedbuff_with_the_round_s_clients_in_flight():
    case = BenchCase(
        name="scale-tiny", description="test", raw=TINY.raw, registered=(40,), per_round=(3,)
    )
    cfg = scale_config(case, "fedbuff", 40, 3)
    assert cfg.strategy.name == "fedbuff" and cfg.clock.name == "devices"
    assert cfg.strategy.set_params == {"concurrency": 3, "buffer_size": 3}
    assert (cfg.num_clients, cfg.clients_per_round, cfg.data.num_samples) == (40, 3, 50)


@pytest.mark.slow
def test_scale_case_measures_set_up_partitioning_and_rounds(tmp_path):
    case = BenchCase(
        name="scale-tiny", description="test", raw=TINY.raw, registered=(20,), per_round=(2,)
    )
    results = bench_scale(case, 1, bench.run_once)
    for label in ("sync@20/2", "fedbuff@20/2"):
        r = results[label]
        assert 0 < r["partition_seconds"] < r["setup_seconds"]
        assert 0 < r["data_seconds"] < r["setup_seconds"]
        assert r["round_seconds_median"] > 0 and r["rss_mb"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["flower", "pfl"])
def test_other_frameworks_do_the_same_work_and_time_their_rounds(runner):
    """With every client in every round, vanilla Flower and pfl-research train the plain
    loop's clients on its batches: same accuracy; each round after the first is timed."""
    if runner == "pfl":
        pytest.importorskip("pfl", reason="pfl-research is in the optional `bench` extra")
    from importlib import import_module

    from fedbatch.bench.rounds import ROUND_SECONDS
    from fedbatch.bench.runners import OPTIONAL_RUNNERS

    cfg = TINY.config(clients_per_round=4, rounds=3)
    workload = workload_for(cfg.to_json())
    ROUND_SECONDS.clear()
    accuracy = import_module(OPTIONAL_RUNNERS[runner]).run(cfg, workload)
    assert len(ROUND_SECONDS) == cfg.rounds - 1 and all(s > 0 for s in ROUND_SECONDS)
    assert accuracy == pytest.approx(RUNNERS["plain"](cfg, workload), abs=1e-9)


def test_cases_run_on_the_device_asked_for_with_a_gpu_share_for_ray_actors():
    on_cpu = bench.on_device(TINY, "cpu").config()
    assert (on_cpu.device, on_cpu.engine.num_gpus) == ("cpu", 0.0)
    on_cuda = bench.on_device(TINY, "cuda")
    assert (on_cuda.config().device, on_cuda.config().engine.num_gpus) == ("cuda", bench.GPU_SHARE)
    own_share = BenchCase("own", "test", TINY.raw | {"engine": {"num_gpus": 1.0}})
    assert bench.on_device(own_share, "cuda").config().engine.num_gpus == 1.0


def test_stream_case_batches_the_inprocess_engines_work():
    from fedbatch.bench.cases import STREAM
    from fedbatch.engine.vectorized import ineligible

    # The stream case's arrivals on the test's small workload: each arrival trained once.
    raw = TINY.raw | {"stream": STREAM.raw["stream"] | {"rate": 4.0}}
    raw["client"] = TINY.raw["client"] | {"steps": None}
    cfg = BenchCase(name="stream-tiny", description="test", raw=raw).config()
    assert ineligible(cfg) == []  # its clients are batched, not handed to the ClientApp
    workload = workload_for(cfg.to_json())
    vectorized = RUNNERS["vectorized"](cfg, workload)
    assert vectorized == pytest.approx(RUNNERS["inprocess"](cfg, workload), rel=1e-5)
