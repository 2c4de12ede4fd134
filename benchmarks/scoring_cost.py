"""Cost of the head-gradient scoring pass relative to a plain forward+backward pass.

Both run over the same calibration batches of the same model, alternating, and
the ratio of median times is printed (target: <= 1.10).

    python benchmarks/scoring_cost.py [--model minilm] [--data-dir ../shared/data] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from harness_plugins import glue, head_gradient, synthetic

from harness import ScoreRequest, TaskRequest, batching, modeling
from harness.models import load_classifier, resolve


def plain_forward_backward(model, batches) -> None:
    """What training does per step: mean loss, gradients of every weight."""
    model.eval()
    for batch in batches:
        modeling.per_example_loss(model, batch).mean().backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    use_sst2 = (args.data_dir / "sst2").is_dir()
    task = glue.load(TaskRequest(args.data_dir, 0, {"max_length": 64})) if use_sst2 else synthetic.load(TaskRequest(None, 0))
    model, tokenizer = load_classifier(resolve(args.model), task.label_names, seed=0)
    indices = batching.calibration_indices(task.train, args.examples, seed=0)
    batches = batching.batches(tokenizer, task.train, 32, task.max_length, indices)
    request = ScoreRequest(model, batches, 0, dict(head_gradient.OPTIONS))
    times: dict[str, list[float]] = {"scoring": [], "forward+backward": []}
    for i in range(args.repeats + 1):
        for name, run in (("scoring", lambda: head_gradient.score(request)),
                          ("forward+backward", lambda: plain_forward_backward(model, batches))):
            start = time.perf_counter()
            run()
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    scoring, plain = (statistics.median(times[k]) for k in ("scoring", "forward+backward"))
    source = "SST-2 train" if use_sst2 else "synthetic train"
    print(f"model {args.model}, {len(indices)} {source} examples in {len(batches)} batches, torch threads {torch.get_num_threads()}")
    print(f"head-gradient scoring pass:    {scoring:.3f} s (median of {args.repeats})")
    print(f"plain forward+backward pass:   {plain:.3f} s")
    print(f"ratio scoring / forward+backward: {scoring / plain:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
