"""Weight surgery: the one package that gates, masks and physically removes heads, neurons, layers and weights.

transformers 5 removed ``head_mask`` and ``prune_heads``, so the harness does both
itself on one code path for every architecture it knows (data-driven layout
tables). Scorers return scores and pruners return masks; only this package
touches weights.
"""

from harness.surgery.common import get as _get
from harness.surgery.heads import (
    KEPT_HEADS_KEY,
    KEPT_KV_HEADS_KEY,
    LAYOUTS,
    AttentionLayout,
    HeadGates,
    HeadGeometry,
    _layers,
    config_geometry,
    head_geometry,
    layout_of,
    mask_heads,
    remove_heads,
)
from harness.surgery.layers import (
    KEPT_LAYERS_KEY,
    BlockHooks,
    BlockVisitor,
    LayerGates,
    layer_list,
    layer_names,
    mask_layers,
    num_layers,
    remove_layers,
)
from harness.surgery.neurons import (
    FFN_LAYOUTS,
    KEPT_NEURONS_KEY,
    FfnLayout,
    NeuronGates,
    ffn_layout_of,
    ffn_module_names,
    ffn_widths,
    mask_neurons,
    neuron_scores,
    remove_neurons,
)
from harness.surgery.saving import load_pruned, save_pruned
from harness.surgery.weights import (
    GROUPS,
    apply_weight_masks,
    count_nonzero,
    hold_weight_masks,
    module_groups,
    parse_groups,
    target_modules,
)

__all__ = [
    "KEPT_LAYERS_KEY",
    "BlockHooks",
    "BlockVisitor",
    "LayerGates",
    "layer_list",
    "layer_names",
    "mask_layers",
    "num_layers",
    "remove_layers",
    "KEPT_KV_HEADS_KEY",
    "config_geometry",
    "FFN_LAYOUTS",
    "GROUPS",
    "KEPT_NEURONS_KEY",
    "FfnLayout",
    "NeuronGates",
    "apply_weight_masks",
    "count_nonzero",
    "hold_weight_masks",
    "ffn_layout_of",
    "ffn_module_names",
    "ffn_widths",
    "mask_neurons",
    "module_groups",
    "neuron_scores",
    "parse_groups",
    "remove_neurons",
    "target_modules",
    "KEPT_HEADS_KEY",
    "LAYOUTS",
    "AttentionLayout",
    "HeadGates",
    "HeadGeometry",
    "_get",
    "_layers",
    "head_geometry",
    "layout_of",
    "load_pruned",
    "mask_heads",
    "remove_heads",
    "save_pruned",
]
