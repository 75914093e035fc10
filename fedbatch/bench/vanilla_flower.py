"""A minimal vanilla Flower app doing a case's work: Flower's `run_simulation` + FedAvg.start.

What a competent Flower user writes: data cached per process, a plain PyTorch loop in the
ClientApp, `FedAvg.start` on the server. Clients are sampled by Flower itself.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fedbatch.bench import rounds
from fedbatch.bench.bare import bare_local_sgd
from fedbatch.config import RunConfig
from fedbatch.federated.workload import Workload, workload_for
from fedbatch.local.trainer import evaluate


def run(cfg: RunConfig, workload: Workload) -> float:
    client_app = ClientApp()
    config_json = cfg.to_json()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        work = workload_for(config_json)
        partition = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        model = work.model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        examples = bare_local_sgd(model, work, partition, server_round)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": examples}),
            }
        )
        return Message(content=content, reply_to=msg)

    result: dict[str, float] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        per_round = cfg.clients_per_round
        strategy = FedAvg(
            fraction_train=per_round / cfg.num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=per_round,
            min_available_nodes=cfg.num_clients,
        )
        model = workload.initial_model()
        round_ends: list[float] = []

        def round_end(server_round: int, arrays: ArrayRecord) -> None:
            if server_round > 0:  # FedAvg calls it after each round's aggregation
                round_ends.append(rounds.now())

        final = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.rounds,
            evaluate_fn=round_end,
        )
        rounds.record_round_ends(round_ends)
        model.load_state_dict(final.arrays.to_torch_state_dict())
        result["accuracy"] = evaluate(model, workload.x_test, workload.y_test)[1]

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=cfg.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cfg.engine.num_cpus, "num_gpus": cfg.engine.num_gpus},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
    )
    return result["accuracy"]
