"""The ``heads`` pruner on grouped-query attention: whole key/value groups or equal query heads per group."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import keep_mask, outputs
from harness_plugins import head_pruner
from test_surgery_decoders import decoder_batch, decoder_config, tiny_decoder

from harness import PruneRequest, ScoreRequest, conformance, surgery
from harness.errors import UsageError
from harness.options import describe

pytestmark = pytest.mark.usefixtures("one_thread")
KV = (2, 2, 2)  # 6 query heads per layer: groups {0, 1, 2} and {3, 4, 5}


def prune(scores: torch.Tensor, sparsity: float, kv_heads=KV, **options) -> torch.Tensor:
    return head_pruner.compute_mask(PruneRequest(scores, sparsity, options, 0, tuple(kv_heads)))


def per_group(keep: torch.Tensor, kv: int) -> list[list[int]]:
    """Kept query heads per key/value group, per layer."""
    return [[int(g.sum()) for g in row.view(kv, -1)] for row in keep]


SCORES = torch.tensor(
    [
        [0.1, 0.2, 0.3, 5.0, 6.0, 7.0],  # group sums 0.6 and 18
        [1.0, 2.0, 3.0, 0.4, 0.5, 0.6],  # 6 and 1.5
        [4.0, 4.0, 4.0, 3.0, 9.0, 0.0],  # 12 and 12
    ]
)


def test_groups_global_removes_the_cheapest_groups():
    keep = prune(SCORES, 1 / 3)  # 6 of 18 heads: two groups of three
    assert per_group(keep, 2) == [[0, 3], [3, 0], [3, 3]]
    keep = prune(SCORES, 0.5)  # three groups; the tie at layer 2 goes to the first group
    assert per_group(keep, 2) == [[0, 3], [3, 0], [0, 3]]
    assert torch.equal(prune(SCORES, 0.5, gqa="groups", scope="global"), keep)  # groups and global are defaults


def test_groups_global_respects_the_floor():
    # layer 0 is cheapest twice over, but must keep one group
    scores = torch.tensor([[0.0] * 6, [1.0, 1.0, 1.0, 2.0, 2.0, 2.0], [3.0] * 6])
    keep = prune(scores, 0.5, min_heads_per_layer=1)
    assert per_group(keep, 2) == [[0, 3], [0, 0 + 3], [0, 3]]
    with pytest.raises(UsageError, match=r"at most 0 of 6 removable keeping 4 head\(s\) per layer\); possible sparsities: none$"):
        prune(scores, 0.5, min_heads_per_layer=4)  # four heads: both groups of every layer stay


def test_groups_per_layer():
    keep = prune(SCORES, 0.5, scope="layer")
    assert per_group(keep, 2) == [[0, 3], [3, 0], [0, 3]]


def test_query_mode_removes_the_same_count_in_every_group():
    keep = prune(SCORES, 1 / 3, gqa="query", scope="layer")  # 2 of 6 per layer: one per group
    assert per_group(keep, 2) == [[2, 2]] * 3
    assert keep.tolist()[0] == [False, True, True, False, True, True]  # the lowest in each group
    assert keep.tolist()[2] == [False, True, True, True, True, False]  # ties: the first head goes
    keep = prune(SCORES, 2 / 3, gqa="query", scope="layer")
    assert per_group(keep, 2) == [[1, 1]] * 3
    assert keep.tolist()[1] == [False, False, True, False, False, True]


def test_query_mode_global_ranks_rounds_across_layers():
    # a round of a layer = its r-th lowest head in each group; sums: L0 5.1, 6.2, 7.3; L1 1.4, 2.5, 3.6; L2 4, 7, 13
    keep = prune(SCORES, 1 / 3, gqa="query")  # 6 heads, three rounds: L1 1.4, L1 2.5, (L1 3.6 would empty it) L2 4
    assert per_group(keep, 2) == [[3, 3], [1, 1], [2, 2]]
    assert keep[1].tolist() == [False, False, True, False, False, True]
    keep = prune(SCORES, 5 / 9, gqa="query")  # 10 heads, five rounds: then L0 5.1 and 6.2 before L2 7
    assert per_group(keep, 2) == [[1, 1], [1, 1], [2, 2]]


@pytest.mark.parametrize("sparsity", [0.3, 0.4, 0.75, 0.9])
def test_impossible_budgets_are_one_line_usage_errors(sparsity):
    with pytest.raises(UsageError) as error:
        prune(SCORES, sparsity)
    message = str(error.value)
    assert "\n" not in message and "key/value groups of 3 query heads" in message
    assert message.endswith("possible sparsities: 0.167, 0.333, 0.500")


def test_every_listed_sparsity_is_possible():
    """The printed values round-trip: typed back on the command line they meet the budget."""
    scores = torch.rand(30, 9, generator=torch.Generator().manual_seed(0))
    kv = (3,) * 30
    for options in ({}, {"gqa": "query"}, {"scope": "layer"}, {"scope": "layer", "gqa": "query"}):
        with pytest.raises(UsageError) as error:
            prune(scores, 0.004 if "scope" not in options else 0.15, kv, **options)
        listed = str(error.value).split("possible sparsities: ")[1]
        if listed.startswith("k/"):  # a range: k/N for k = 1..M (first, second, ..., last; nearest a, b)
            n, m = (int(x) for x in listed.split(" (")[0][2:].split(" for k = 1.."))
            assert (n, m) == (90, 60)
            values = [f"{k / n:.3f}" for k in range(1, m + 1)]
        else:
            values = listed.split(", ")
            assert values == ["0.333", "0.667"]
        for value in values:
            keep = prune(scores, float(value), kv, **options)
            assert round(float(value) * keep.numel()) == int((~keep).sum()), (options, value)


def test_mqa_allows_only_query_mode():
    scores = torch.rand(3, 6, generator=torch.Generator().manual_seed(1))
    with pytest.raises(UsageError, match="multi-query.*use -o heads.gqa=query"):
        prune(scores, 0.5, kv_heads=(1, 1, 1))
    for scope in ("global", "layer"):  # one group: query mode is plain head pruning
        grouped = prune(scores, 0.5, kv_heads=(1, 1, 1), gqa="query", scope=scope)
        assert torch.equal(grouped, prune(scores, 0.5, kv_heads=(), scope=scope))


def test_ungrouped_models_keep_the_old_behaviour():
    scores = torch.rand(4, 6, generator=torch.Generator().manual_seed(2))
    for sparsity, scope in itertools.product((0.25, 0.3, 0.5), ("global", "layer")):
        old = head_pruner.compute_mask(PruneRequest(scores, sparsity, {"scope": scope}))
        assert torch.equal(prune(scores, sparsity, kv_heads=(), scope=scope, gqa="query"), old)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="gqa must be 'groups' or 'query'"):
        prune(SCORES, 0.5, gqa="heads")
    with pytest.raises(ValueError, match="kv_heads has 2 layers"):
        prune(SCORES, 0.5, kv_heads=(2, 2))
    with pytest.raises(ValueError, match="do not split into"):
        prune(SCORES, 0.5, kv_heads=(4, 4, 4))
    with pytest.raises(ValueError, match="same key/value head count"):
        prune(SCORES, 0.5, kv_heads=(2, 3, 2))


def test_registered_with_choices_and_conformant():
    (pruner,) = head_pruner.harness_pruners()
    assert dict(pruner.options) == {"scope": "global", "min_heads_per_layer": 1, "gqa": "groups"}
    assert {s.name: s.choices for s in describe(pruner)}["gqa"] == ("groups", "query")
    conformance.check_plugin(pruner)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "llama-mqa"])
def test_check_budgets_from_a_config(arch):
    geometry = surgery.heads.config_geometry(decoder_config(arch))
    if arch == "llama-mqa":
        head_pruner.check_budgets(geometry, [0.5, 0.3], {"gqa": "query"})
        with pytest.raises(UsageError, match="multi-query"):
            head_pruner.check_budgets(geometry, [0.5], {})
        return
    head_pruner.check_budgets(geometry, [1 / 3, 0.5, 0.34], {})
    with pytest.raises(UsageError, match=r"sparsity 0.25 asks for 4 of 18 heads in all"):
        head_pruner.check_budgets(geometry, [0.5, 0.25], {})
    head_pruner.check_budgets(geometry, [0.25], {"gqa": "query"})  # 4 heads: two rounds of two
    head_pruner.check_budgets(surgery.heads.config_geometry(decoder_config("gpt2")), [0.25], {})  # not grouped


REAL = [(arch, gqa, scope) for arch in ("llama", "qwen2", "llama-mqa") for gqa in ("groups", "query")
        for scope in ("global", "layer") if not (arch == "llama-mqa" and gqa == "groups")]


@pytest.mark.parametrize("arch,gqa,scope", REAL)
def test_masks_from_real_scores_are_removable(arch, gqa, scope):
    """head-gradient scores, the pruner's mask, then physical removal: equal to masking."""
    from harness_plugins import head_gradient

    model = tiny_decoder(arch, seed=3, attn="eager")
    batches = [decoder_batch(seed=s) for s in range(2)]
    scores = head_gradient.score(ScoreRequest(model, batches, 0, dict(head_gradient.OPTIONS)))
    geometry = surgery.head_geometry(model)
    sparsity = 1 / 3 if gqa == "query" or scope == "global" else 0.5
    request = PruneRequest(scores, sparsity, {"gqa": gqa, "scope": scope}, 0, geometry.kv_heads_per_layer)
    keep = head_pruner.compute_mask(request)
    with surgery.mask_heads(model, keep):
        masked = outputs(model, batches[0])
    surgery.remove_heads(model, keep)
    assert surgery.head_geometry(model).total_heads == 18 - int((~keep).sum())
    torch.testing.assert_close(outputs(model, batches[0]), masked, rtol=0, atol=1e-4)
    assert keep_mask(model.config.harness_kept_heads, 6).sum() == keep.sum()
