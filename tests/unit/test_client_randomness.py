"""A client-round's own random stream (dropout masks) in the ClientApp."""

from types import SimpleNamespace

import torch
from torch import nn

from fedbatch.federated.client_app import Task
from fedbatch.seeding import derive_seed


def test_a_client_round_draws_its_own_seeded_stream_and_restores_the_global_one():
    workload = SimpleNamespace(cfg=SimpleNamespace(seed=7))
    task = Task(workload, {"server-round": 3}, 2, nn.Identity(), torch.zeros(4), torch.zeros(4))
    torch.manual_seed(123)
    expected_after = torch.rand(5)
    torch.manual_seed(123)
    with task.own_randomness():
        drawn = torch.rand(5)
        mask = nn.functional.dropout(torch.ones(8), 0.5)
    after = torch.rand(5)
    # The numbers torch.manual_seed gives for ("dropout", client 2, round 3).
    torch.manual_seed(derive_seed(7, "dropout", 2, 3))
    assert torch.equal(drawn, torch.rand(5))
    assert torch.equal(mask, nn.functional.dropout(torch.ones(8), 0.5))
    assert torch.equal(after, expected_after)  # the global stream went on untouched
