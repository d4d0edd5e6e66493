"""A user model reachable by import path, for the custom-model tests."""

from torch import nn


def tiny_net(input_dim: int, num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(input_dim, width), nn.Tanh(),
                         nn.Linear(width, num_classes))


def not_a_module(input_dim: int, num_classes: int) -> str:
    return "nope"
