# mystrategy.py
"""A strategy of your own: a Flower Strategy, given fedbatch's arguments and the YAML's."""

from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg


class DampedFedAvg(FedAvg):
    """FedAvg that moves the global model only `step` of the way to the clients' mean."""

    def __init__(self, *, step: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)  # fraction_train, train_metrics_aggr_fn, … from fedbatch
        self.step = step

    def configure_train(self, server_round, arrays, config, grid):
        self.start_arrays = arrays  # the global model this round starts from
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        mean, metrics = super().aggregate_train(server_round, replies)
        if mean is None:  # every client failed
            return None, metrics
        moved = {}
        for key, array in mean.items():
            old, new = self.start_arrays[key].numpy(), array.numpy()
            moved[key] = Array((old + self.step * (new - old)).astype(old.dtype))
        return ArrayRecord(moved), metrics
