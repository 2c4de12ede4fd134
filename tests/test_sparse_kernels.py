"""``--sparse-kernels``: 2:4 weights timed on torch's semi-structured kernels (CUDA). Here, without CUDA, the
conversion runs through a stand-in converter; the real one refuses every CPU tensor, and the flag refuses a CPU run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from harness_plugins import prune_methods
from test_row_group import random_scores

import harness
from harness import PruneRequest, surgery
from harness.granularities.weights import WEIGHT

pytestmark = pytest.mark.usefixtures("one_thread")


def two_four_model() -> torch.nn.Module:
    model = tiny_model("bert")
    keep = prune_methods.unstructured(PruneRequest(random_scores(model), 0.5, {"pattern": "2:4"}, model=model))
    return WEIGHT.apply(model, keep), tuple(keep)


class Packed(torch.Tensor):
    """Stands for torch's ``SparseSemiStructuredTensor``: another tensor type holding the same values."""


class StandIn:
    """Converts as torch would on a GPU (a tensor of another type, the same values), refusing shapes it is told to
    (every shape with ``refuse=-1``)."""

    def __init__(self, refuse: int | None = None) -> None:
        self.refuse, self.seen = refuse, []

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(weight.shape))
        if self.refuse in (weight.shape[0], -1):
            raise RuntimeError("shape is not supported")
        return weight.clone().as_subclass(Packed)


class Wrapper(torch.Tensor):
    """A wrapper tensor as torch's semi-structured weight is one: no storage of its own, inner tensors hold it."""

    __slots__ = ("packed", "meta")

    @staticmethod
    def __new__(cls, packed: torch.Tensor, meta: torch.Tensor, shape: tuple[int, int]) -> Wrapper:
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=packed.dtype)

    def __init__(self, packed: torch.Tensor, meta: torch.Tensor, shape: tuple[int, int]) -> None:
        self.packed, self.meta = packed, meta

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["packed", "meta"], None

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206 - torch's protocol
        raise NotImplementedError(f"{func} on a stand-in wrapper")


def test_two_four_is_at_most_two_nonzeros_in_every_group_of_four_inputs() -> None:
    weight = torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3], [0, 0, 0, 0, 1, 1, 0, 0]])
    assert surgery.is_two_four(weight)
    weight[1, 6] = 5.0  # three nonzeros in the second row's second group
    assert not surgery.is_two_four(weight)
    assert not surgery.is_two_four(torch.ones(4, 8)) and not surgery.is_two_four(torch.zeros(4, 6))
    model, pruned = two_four_model()
    modules = dict(model.named_modules())
    assert pruned and all(surgery.is_two_four(modules[name].weight) for name in pruned)
    assert not surgery.is_two_four(modules["classifier"].weight)


def test_the_2_4_layers_are_converted_in_a_copy_and_refused_ones_stay_dense() -> None:
    model, pruned = two_four_model()
    before = {name: p.clone() for name, p in model.named_parameters()}
    converter = StandIn()
    result = surgery.semi_structured(model, converter)
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert set(result.converted) == set(pruned) and result.linear == linear and len(converter.seen) == len(pruned)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the original is untouched
    timed = dict(result.model.named_modules())
    assert all(isinstance(timed[name].weight, Packed) for name in pruned)
    assert not any(isinstance(p, Packed) for p in model.parameters())
    embeddings = "bert.embeddings.word_embeddings"
    assert timed[embeddings].weight is dict(model.named_modules())[embeddings].weight  # shared, not copied
    inputs = {"input_ids": torch.randint(5, 90, (2, 6))}
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, result.model(**inputs).logits)
    ffn = dict(model.named_modules())[pruned[-1]].weight.shape[0]
    partial = surgery.semi_structured(model, StandIn(refuse=ffn))
    assert 0 < len(partial.converted) < len(pruned)
    assert all(dict(model.named_modules())[name].weight.shape[0] != ffn for name in partial.converted)
    assert set(partial.refused) == set(pruned) - set(partial.converted) and "not supported" in partial.error
    dense = tiny_model("bert")
    assert surgery.semi_structured(dense, StandIn()).model is dense  # no 2:4 layer: nothing copied


def test_model_bytes_count_what_a_wrapper_weight_holds() -> None:
    from harness import measures

    module = torch.nn.Linear(8, 4, bias=False)
    plain = measures.model_bytes(module)
    del module.weight
    packed, meta = torch.zeros(4, 4), torch.zeros(4, 1, dtype=torch.int16)
    module.register_buffer("weight", Wrapper(packed, meta, (4, 8)))
    assert plain == 4 * 8 * 4 and measures.model_bytes(module) == 4 * 4 * 4 + 4 * 2


def test_torch_refuses_cpu_tensors_so_nothing_is_converted_here() -> None:
    model, _ = two_four_model()
    result = surgery.semi_structured(model)
    assert result.converted == () and len(result.refused) > 0 and "CUDA" in result.error


def test_the_flag_without_cuda_is_a_one_line_error(capsys) -> None:
    from harness.cli import main

    assert main(["bench", "--sparse-kernels", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--sparse-kernels" in err and "CUDA" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "--cross-adapters", "--plugins", "magnitude", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--cross-adapters" in err and len(err.strip().splitlines()) == 1


def test_2_4_rows_are_timed_on_the_converted_copy_and_say_so(tiny_model_dir, tmp_path, monkeypatch) -> None:
    """The cell path on a CPU: the device check and torch's converter replaced by stand-ins."""
    from harness import planning

    converter = StandIn()
    real = surgery.semi_structured
    monkeypatch.setattr(planning, "_check_sparse_kernels", lambda device, dtype: None)
    monkeypatch.setattr(surgery, "semi_structured", lambda model: real(model, converter))
    result = harness.run(models=[str(tiny_model_dir("bert"))], plugins=["magnitude", "random-weight", "unstructured"],
                         out=tmp_path / "out", sparsities=[0.5], train_steps=0, calib_examples=8, eval_limit=16,
                         latency_batch=2, latency_tokens=8, isolation="none", progress=False, baselines=False,
                         dtype="float32", options=["unstructured.pattern=2:4"], sparse_kernels=True)
    rows = result.rows.set_index("scorer")
    assert (result.rows.status == "ok").all()
    extras = json.loads(rows.loc["magnitude", "extras"])
    layers = sum(isinstance(m, torch.nn.Linear) for m in tiny_model("bert").modules())
    targets = len(surgery.target_modules(tiny_model("bert")))
    assert extras["latency_kernel"] == f"semi-structured 2:4: {targets} of {layers} linear layers on torch's " \
                                       "sparse kernels"  # the pruned ones: not the pooler or the classifier
    assert "latency_from" not in extras and converter.seen  # timed itself, not as the dense kernel's
    assert "latency_kernel" not in json.loads(rows.loc["none", "extras"])
    second = json.loads(rows.loc["random-weight", "extras"])  # the same converted kernels: timed once
    assert second["latency_kernel"] == extras["latency_kernel"] and second["latency_from"] == rows.loc["magnitude", "run_id"]


def test_a_2_4_row_whose_layers_the_kernels_refuse_says_so(tiny_model_dir, tmp_path, monkeypatch) -> None:
    from harness import planning

    real = surgery.semi_structured
    monkeypatch.setattr(planning, "_check_sparse_kernels", lambda device, dtype: None)
    monkeypatch.setattr(surgery, "semi_structured", lambda model: real(model, StandIn(refuse=-1)))
    result = harness.run(models=[str(tiny_model_dir("bert"))], plugins=["magnitude", "unstructured"],
                         out=tmp_path / "out", sparsities=[0.5], train_steps=0, calib_examples=8, eval_limit=16,
                         latency_batch=2, latency_tokens=8, isolation="none", progress=False, baselines=False,
                         dtype="float32", options=["unstructured.pattern=2:4"], sparse_kernels=True)
    extras = json.loads(result.rows.set_index("scorer").loc["magnitude", "extras"])
    targets = len(surgery.target_modules(tiny_model("bert")))
    assert extras["latency_kernel"].startswith("dense: zeros are multiplied")
    assert extras["sparse_kernels_refused"] == f"{targets} 2:4 layers dense (RuntimeError: shape is not supported)"
