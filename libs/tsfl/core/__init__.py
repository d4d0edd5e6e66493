"""Core data model: parameter layouts, update envelopes, streaming accumulators."""

from tsfl.core.accumulator import WeightedAccumulator
from tsfl.core.layout import ParamLayout, ParamSpec
from tsfl.core.update import Update

__all__ = ["ParamLayout", "ParamSpec", "Update", "WeightedAccumulator"]
