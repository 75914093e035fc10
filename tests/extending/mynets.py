# mynets.py
"""A model of your own: fedbatch passes `input_shape` and `num_classes`, the YAML the rest."""

import math

from torch import nn


class TinyNet(nn.Module):
    """An MLP: Linear → ReLU per hidden layer, then Linear to the classes' logits."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.layers = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, x):
        return self.layers(x)
