"""A user model reachable by import path, for the custom-model tests, and a client
that must never be asked to train (for device-loop tests that hand out no task)."""

from torch import nn


def tiny_net(input_dim: int, num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(input_dim, width), nn.Tanh(),
                         nn.Linear(width, num_classes))


def not_a_module(input_dim: int, num_classes: int) -> str:
    return "nope"


class NoTraining:
    """A device client for tests whose coordinator never hands out a task."""

    def get_parameters(self, config):
        return []

    def fit(self, parameters, config):
        raise AssertionError("no task is ever handed out")

    def evaluate(self, parameters, config):
        raise AssertionError("no task is ever handed out")
