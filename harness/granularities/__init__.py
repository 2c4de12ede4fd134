"""The built-in granularities: attention heads, FFN neurons, whole blocks (layers) and single weights.

Each is one module exporting a :class:`harness.records.Granularity`, registered
through the ``harness`` entry-point group like any plugin's, so a third-party
granularity (N:M blocks, ...) is one module of the same shape.
"""

from __future__ import annotations

from harness import hookimpl
from harness.granularities import activations, heads, layers, neurons, weights
from harness.records import Granularity


@hookimpl
def harness_granularities() -> list[Granularity]:
    return [heads.HEAD, neurons.NEURON, weights.WEIGHT, layers.LAYER, activations.ACTIVATION]
