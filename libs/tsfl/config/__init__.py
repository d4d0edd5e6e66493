"""The job specification: a YAML file validated by pydantic.

Every problem is reported as one line naming the field, e.g.::

    training.lr: Input should be greater than 0
    strategy.nme: unknown key

One module per domain (:mod:`.data`, :mod:`.training`, :mod:`.privacy`,
:mod:`.compression`, :mod:`.robust`, :mod:`.crypto`), the whole job and the rules that
cross domains in :mod:`.job`, reading files in :mod:`.loading`; everything is importable
from here.
"""

from tsfl.config.adaptive import ClientLrSpec, FedBuffSpec, LrScheduleSpec
from tsfl.config.base import (
    MAX_CLIENTS,
    MAX_ROUNDS,
    MAX_SPEC_FILE_BYTES,
    Fraction,
    PositiveFloat,
    PositiveInt,
    Spec,
)
from tsfl.config.clock import ClockSpec
from tsfl.config.compression import AdaptiveCompressionSpec, CompressionSpec, UplinkSpec
from tsfl.config.crypto import CryptoSpec, HeSpec, SecAggSpec
from tsfl.config.data import ClientsSpec, DataSpec, ModelSpec, PartitionSpec, SyntheticSpec
from tsfl.config.job import JobSpec
from tsfl.config.loading import (
    ConfigError,
    bundled_example,
    bundled_examples,
    find_job_file,
    load_job,
    parse_job,
    parse_spec_text,
)
from tsfl.config.privacy import AdaptiveClippingSpec, PrivacySpec
from tsfl.config.robust import (
    ATTACKS,
    ROBUST_AGGREGATORS,
    AttackKind,
    AttackSpec,
    RobustRule,
    RobustSpec,
)
from tsfl.config.selection import SelectionSpec
from tsfl.config.training import (
    DpSgdSpec,
    EvaluationSpec,
    NetworkSpec,
    RoundSpec,
    SimulationSpec,
    StrategySpec,
    TrainingSpec,
)

__all__ = [
    "ATTACKS", "MAX_CLIENTS", "MAX_ROUNDS", "MAX_SPEC_FILE_BYTES", "ROBUST_AGGREGATORS",
    "AdaptiveClippingSpec", "AdaptiveCompressionSpec", "AttackKind", "AttackSpec",
    "ClientLrSpec", "ClientsSpec", "ClockSpec", "CompressionSpec", "ConfigError",
    "CryptoSpec", "DataSpec", "DpSgdSpec", "EvaluationSpec", "FedBuffSpec", "Fraction",
    "HeSpec", "JobSpec", "LrScheduleSpec", "ModelSpec", "NetworkSpec", "PartitionSpec",
    "PositiveFloat", "PositiveInt", "PrivacySpec", "RobustRule", "RobustSpec",
    "RoundSpec", "SecAggSpec", "SelectionSpec", "SimulationSpec", "Spec",
    "StrategySpec", "SyntheticSpec", "TrainingSpec", "UplinkSpec", "bundled_example",
    "bundled_examples", "find_job_file", "load_job", "parse_job", "parse_spec_text",
]
