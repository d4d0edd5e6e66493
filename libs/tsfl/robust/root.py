"""FLTrust's server-side root update (Cao et al., NDSS 2021, §4): the server trains the
current global model on its own small clean root dataset, with the clients' training
settings, and uses that update g₀ as the direction it trusts.

In simulation the root dataset is a seeded sample of ``root_examples`` records of the
job's training distribution (the server's own collection; FLTrust assumes it is drawn
from the same distribution as the clients' data, not that it is disjoint from it).
"""

from __future__ import annotations

import numpy as np
import torch

from tsfl.config import JobSpec
from tsfl.sim.datasets import load_dataset
from tsfl.sim.models import build_model
from tsfl.training.flat import FlatModule
from tsfl.training.loop import TrainSettings, train_epochs


class RootTrainer:
    def __init__(self, spec: JobSpec):
        data = load_dataset(spec.data, spec.clients.count)
        rng = np.random.default_rng([spec.seed, 0x2007])
        n = min(spec.robust.root_examples, len(data.y_train))
        pick = rng.choice(len(data.y_train), n, replace=False)
        self.x = torch.from_numpy(np.ascontiguousarray(data.x_train[pick]))
        self.y = torch.from_numpy(np.ascontiguousarray(data.y_train[pick]))
        self.flat = FlatModule(build_model(spec.model, data.input_shape, data.num_classes,
                                           spec.seed))
        t = spec.training
        self.settings = TrainSettings(optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
                                      weight_decay=t.weight_decay, epochs=t.epochs,
                                      batch_size=t.batch_size)
        self.seed = spec.seed

    def root_update(self, global_vector: np.ndarray, round_number: int) -> np.ndarray:
        """g₀ for the round: the root dataset's update from ``global_vector``."""
        start = np.array(global_vector, dtype=np.float32, copy=True)
        self.flat.load(start)
        train_epochs(self.flat.module, self.flat.params, self.x, self.y, self.settings,
                     np.random.default_rng([self.seed, round_number, 0x2007]))
        return np.subtract(self.flat.vector, start, dtype=np.float32)
