"""SparseGPT and Wanda in the harness next to llmcompressor's, on SmolLM2-135M: perplexity and pruning wall time.

Both sides prune the same saved model with the same calibration windows (token
ids written once, from the harness's ``wikitext2`` task and seed), at the same
sparsity, each in its own process so peak memory is each one's own; the pruned
weights are then evaluated by one function on the same WikiText-2 test windows.
llmcompressor pulls another transformers, so it runs from its own venv
(``--peer-python``):

    python -m venv /work/llmc-venv
    /work/llmc-venv/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1
    OMP_NUM_THREADS=1 python benchmarks/llm_peer.py --peer-python /work/llmc-venv/bin/python --data-dir ../shared/data

Printed per method: perplexity of each (and their ratio; goal within 2%),
pruning seconds of each (ratio peer / harness; goal >= 1), peak RSS of each
process (the model load included). The peer's Wanda calibrates each block on the
blocks below as already pruned, as the reference does: ``wanda-sequential`` is
that protocol, ``wanda`` (scored once on the dense model) is shown beside it.
Its SparseGPT removes ``int(n * sparsity) + 1`` weights per column block (the
harness exactly its share).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# the peer's Wanda is sequential: compare it with both; sparsegpt-reference counts removed weights per column block
# as the reference code (and the peer) do, ``int(n * sparsity) + 1`` ties included, instead of exactly its share
METHODS = ("sparsegpt", "sparsegpt-reference", "wanda", "wanda-sequential")
PEER_OF = {"sparsegpt-reference": "sparsegpt", "wanda-sequential": "wanda"}


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the forking parent's peak over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_folder(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def target_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The pruned weights: every Linear inside the decoder layers (not the embeddings or the LM head)."""
    return {name: module.weight.detach().clone() for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in name}


def prepare(work: Path, data_dir: Path, calib: int, evaluate: int, seed: int) -> None:
    """The model as a plain folder, and the calibration and evaluation token windows, from the harness itself."""
    from harness_plugins import wikitext

    from harness import TaskRequest, batching, models

    data = wikitext.load(TaskRequest(data_dir, seed, {}))
    from transformers import AutoModelForCausalLM

    model, tokenizer = models.load_for_task(models.resolve("smollm2"), data, seed)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized to fp32 on load: a plain model now, but transformers won't save it
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    feed = batching.feed_for(data, tokenizer)
    torch.save(torch.cat([b["input_ids"] for b in feed.calibration(calib, 8, seed)]), work / "calib.pt")
    torch.save(torch.cat([b["input_ids"] for b in feed.evaluation(evaluate)]), work / "eval.pt")


def harness_side(work: Path, method: str, sparsity: float) -> dict[str, float]:
    from harness_plugins import prune_methods, sparsegpt, wanda

    from harness import PruneRequest, ScoreRequest
    from harness.batching import block_batch
    from harness.granularities.weights import WEIGHT

    model, ids = load_folder(work / "model"), torch.load(work / "calib.pt")
    batches = [block_batch(ids[i:i + 8]) for i in range(0, len(ids), 8)]
    modules = dict(model.named_modules())
    targets = tuple(name for name in modules if isinstance(modules[name], torch.nn.Linear) and ".layers." in name)
    zeros = {name: torch.zeros(()).expand(modules[name].weight.shape) for name in targets}  # shapes only, no memory
    start = time.perf_counter()
    if method.startswith("sparsegpt"):
        options = {"count": "reference"} if method == "sparsegpt-reference" else {}
        keep = sparsegpt.compute_mask(PruneRequest(zeros, sparsity, options, model=model, batches=batches))
    else:
        score = wanda.score if method == "wanda" else wanda.score_sequential
        scores = score(ScoreRequest(model, batches, 0, sparsity=sparsity, targets=targets))
        unstructured = next(p for p in prune_methods.harness_pruners() if p.name == "unstructured")
        keep = unstructured.compute_mask(PruneRequest(scores, sparsity, {"group": "row"}, model=model))
    WEIGHT.apply(model, keep)
    seconds = time.perf_counter() - start
    torch.save(target_weights(model), work / f"harness-{method}.pt")
    return {"seconds": seconds, "peak_mb": peak_mb()}


def peer_side(work: Path, method: str, sparsity: float) -> dict[str, float]:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoTokenizer

    model, ids = load_folder(work / "model"), torch.load(work / "calib.pt")
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    common = dict(sparsity=sparsity, mask_structure="0:0", targets=["Linear"], ignore=["lm_head"])
    recipe = (SparseGPTModifier(block_size=128, dampening_frac=0.01, **common) if method == "sparsegpt"
              else WandaPruningModifier(**common))
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    start = time.perf_counter()
    oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=recipe, num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential")
    seconds = time.perf_counter() - start
    torch.save(target_weights(model), work / f"peer-{method}.pt")
    return {"seconds": seconds, "peak_mb": peak_mb()}


def perplexity_of(work: Path, weights: str | None) -> tuple[float, float]:
    """(perplexity on the evaluation windows, fraction of zeros in the pruned weights)."""
    from harness.batching import block_batch, perplexity

    model, ids = load_folder(work / "model"), torch.load(work / "eval.pt")
    zeros = 0.0
    if weights is not None:
        state = torch.load(work / weights)
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, weight in state.items():
                modules[name].weight.copy_(weight)
        zeros = sum(int((w == 0).sum()) for w in state.values()) / sum(w.numel() for w in state.values())
    return perplexity(model, [block_batch(ids[i:i + 4]) for i in range(0, len(ids), 4)]), zeros


def run_side(python: str, role: str, work: Path, method: str, sparsity: float) -> dict[str, float]:
    command = [python, __file__, "--role", role, "--work", str(work), "--method", method, "--sparsity", str(sparsity)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{role} {method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, Path(args.data_dir), args.calib, args.eval, args.seed)
    dense, _ = perplexity_of(work, None)
    print(f"SmolLM2-135M, WikiText-2: {args.eval} test windows, {args.calib} calibration windows (seed {args.seed}), "
          f"sparsity {args.sparsity}; dense perplexity {dense:.3f}")
    print("method           harness_ppl  peer_ppl  ppl_ratio  harness_s  peer_s  speed_ratio  harness_MB  peer_MB  zeros h/p")
    peers: dict[str, tuple[dict[str, float], tuple[float, float]]] = {}
    for method in args.methods:
        ours = run_side(sys.executable, "harness", work, method, args.sparsity)
        name = PEER_OF.get(method, method)
        if name not in peers:
            result = run_side(args.peer_python, "peer", work, name, args.sparsity)
            peers[name] = (result, perplexity_of(work, f"peer-{name}.pt"))
        peer, (ppl_p, zeros_p) = peers[name]
        ppl_h, zeros_h = perplexity_of(work, f"harness-{method}.pt")
        print(f"{method:<16} {ppl_h:>11.3f} {ppl_p:>9.3f} {ppl_h / ppl_p:>10.4f} {ours['seconds']:>10.1f} "
              f"{peer['seconds']:>7.1f} {peer['seconds'] / ours['seconds']:>12.2f} {ours['peak_mb']:>11.0f} "
              f"{peer['peak_mb']:>8.0f}  {zeros_h:.4f}/{zeros_p:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", default="/work/llmc-venv/bin/python")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--work", default="/tmp/llm-peer")
    parser.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens")
    parser.add_argument("--eval", type=int, default=16, help="test windows of 512 tokens evaluated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--role", choices=("harness", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is None:
        compare(args)
        return
    side = harness_side if args.role == "harness" else peer_side
    print(json.dumps(side(Path(args.work), args.method, args.sparsity)))


if __name__ == "__main__":
    main()
