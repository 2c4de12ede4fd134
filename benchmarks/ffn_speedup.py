"""Real speed from FFN-neuron removal vs none from unstructured zeros, on MiniLM at batch 32 x 128 tokens.

One run, three models timed in alternation (median of N forward passes each):
dense, 50% of FFN neurons removed physically (lowest L2 norm per layer), and 50%
of all linear weights zeroed (global magnitude, masks made permanent). Prints
each measured speedup beside its FLOP-proportional ideal (2 FLOPs per nonzero
weight), so an ideal that dense kernels do not deliver is visible as such.

    python benchmarks/ffn_speedup.py [--sparsity 0.5] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy

import torch
from harness_plugins import magnitude, prune_methods

from harness import PruneRequest, ScoreRequest, measures, modeling, surgery
from harness.models import load_classifier, resolve


def neuron_pruned(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    scores = magnitude.score_neurons(ScoreRequest(model, [], 0))
    keep = prune_methods.neurons(PruneRequest(scores, sparsity, {"scope": "layer"}))
    return surgery.remove_neurons(copy.deepcopy(model), keep)


def weight_pruned(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    targets = surgery.target_modules(model)
    scores = magnitude.score_weights(ScoreRequest(model, [], 0, targets=targets))
    masks = prune_methods.global_unstructured(PruneRequest(scores, sparsity))
    return surgery.apply_weight_masks(copy.deepcopy(model), masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    model, _ = load_classifier(resolve("minilm"), ("negative", "positive"), seed=0)
    model.eval()
    models = {"dense": model, "neurons": neuron_pruned(model, args.sparsity),
              "unstructured": weight_pruned(model, args.sparsity)}
    inputs = measures.latency_input(model, 32, 128)
    times = measures.compare_latency_ms(list(models.values()), inputs, repeats=args.repeats, warmup=3)
    flops = [measures.forward_flops(m, inputs) for m in models.values()]
    print(f"MiniLM, batch 32 x 128 tokens, {torch.get_num_threads()} threads, median of {args.repeats}, alternating")
    for (name, m), ms, f in zip(models.items(), times, flops):
        print(f"  {name:13s} {ms:8.1f} ms  params {modeling.count_params(m):>10,}  "
              f"GFLOPs {f / 1e9:6.2f}  measured speedup {times[0] / ms:5.3f}x  FLOP-proportional ideal {flops[0] / f:5.3f}x")
    print(f"{args.sparsity:.0%} FFN neurons removed: {times[0] / times[1]:.3f}x measured (target >= 1.2x), "
          f"ideal {flops[0] / flops[1]:.3f}x")


if __name__ == "__main__":
    main()
