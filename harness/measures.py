"""What a row measures besides quality: latency (prefill and decode), memory and theoretical FLOPs.

Latency is measured, never derived: the same fixed input (batch x tokens) is run
on every model of a grid so speedups compare like with like, and a pruned model
is timed in alternation with the dense one. Decode latency (causal LMs) is the
time per generated token with the key/value cache, after a prefill of that input.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn


def latency_input(model: nn.Module, batch_size: int = 32, tokens: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed full-length batch of real token ids (no padding), the same for every model, on the model's device
    (drawn on the CPU, so every device gets the same ids)."""
    import torch

    from harness.devices import device_of

    generator = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(min(1000, vocab - 1), vocab, (batch_size, tokens), generator=generator).to(device_of(model))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _time_ms(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """One forward's wall time; on a GPU the queue is drained before and after, so the kernels are what is timed."""
    from harness.devices import synchronize

    device = inputs["input_ids"].device
    synchronize(device)
    start = time.perf_counter()
    model(**inputs)
    synchronize(device)
    return (time.perf_counter() - start) * 1000


@dataclass(frozen=True)
class Timing:
    """Median and interquartile range of repeated timings (ms): the spread says how far to trust a speedup."""

    median_ms: float
    iqr_ms: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        if len(samples) < 2:
            return cls(float(samples[0]), 0.0)
        quartiles = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(statistics.median(samples), quartiles[2] - quartiles[0])


def measure_latency_ms(model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of one inference forward pass, in milliseconds."""
    return compare_latency_ms([model], inputs, repeats, warmup)[0]


def compare_latency_ms(
    models: list[nn.Module], inputs: dict[str, torch.Tensor], repeats: int = 7, warmup: int = 2
) -> list[float]:
    """Median forward time of each model, run in alternation so load changes hit all alike."""
    return [timing.median_ms for timing in compare_latency(models, inputs, repeats, warmup)]


def compare_latency(
    models: list[nn.Module], inputs: dict[str, torch.Tensor], repeats: int = 7, warmup: int = 2
) -> list[Timing]:
    """Forward time of each model (median and spread), run in alternation so load changes hit all alike."""
    return _alternate([lambda model=model: _time_ms(model, inputs) for model in models], models, repeats, warmup)


def _alternate(runs: list[Callable[[], float]], models: list[nn.Module], repeats: int, warmup: int) -> list[Timing]:
    """Each run (one per model) ``warmup + repeats`` times, in alternation; timings of the repeats only."""
    import torch

    for model in models:
        model.eval()
    times: list[list[float]] = [[] for _ in runs]
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for index, run in enumerate(runs):
                elapsed = run()
                if i >= warmup:
                    times[index].append(elapsed)
    return [Timing.of(t) for t in times]


def dense_and_pruned_ms(dense: nn.Module, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Latency (ms) of the dense model and of ``model`` (timed in alternation); see :func:`dense_and_pruned`."""
    reference, latency = dense_and_pruned(dense, model, inputs)
    return reference.median_ms, latency.median_ms


def dense_and_pruned(dense: nn.Module, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[Timing, Timing]:
    """Prefill timing of the dense model and of ``model`` (in alternation), as the progress phase ``latency
    timing``: one step, announced when done, so no progress hook runs inside the timed passes."""
    from harness import progress

    with progress.phase("latency timing", total=1) as step:
        models = [dense] if model is dense else [dense, model]
        timings = compare_latency(models, inputs)
        step()
    return timings[0], timings[-1]


def forward_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Theoretical FLOPs of one forward pass: every linear layer plus attention's two matmuls.

    Linear layers are counted by hooks on the real modules (so sliced layers count
    as sliced) at 2 FLOPs per nonzero weight and output position, so zeros from
    unstructured pruning count as skipped, which dense kernels do not do: this is
    the ideal, never a measured speed. Attention adds 2 x 2·T²·d per head.
    Every row of ``inputs`` is full length (no padding), so every row costs the
    same: one row is run and its count multiplied by the batch, the same integer.
    """
    import torch

    from harness import surgery

    total = 0

    from transformers.pytorch_utils import Conv1D  # GPT-2's transposed linear layer

    def count(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        width = getattr(module, "out_features", None) or module.nf
        total += 2 * int(module.weight.count_nonzero()) * (output.numel() // max(width, 1))

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    batch, tokens = inputs["input_ids"].shape
    try:
        with torch.inference_mode():
            model(**{key: value[:1] for key, value in inputs.items()})
    finally:
        for handle in handles:
            handle.remove()
    total *= batch
    geometry = surgery.head_geometry(model)
    return total + 4 * batch * tokens * tokens * geometry.head_dim * geometry.total_heads


def weights_changed(before: nn.Module, after: nn.Module) -> bool:
    """Whether a pruner changed any weight it kept (SparseGPT's reconstruction), not only zeroed some: measured,
    so a pruner that needs its own copy for another reason (``teal`` installs run-time thresholds) says False."""
    import torch

    old = dict(before.named_parameters())
    with torch.no_grad():
        for name, value in after.named_parameters():
            base = old.get(name)
            if base is not None and base.shape == value.shape and bool(((base != value) & (value != 0)).any()):
                return True
    return False


DECODE_BATCHES = (1, 8)  # the decode columns: one stream (interactive use) and a small served batch


def decode_prompt(model: nn.Module, batch_size: int, tokens: int, new_tokens: int, seed: int = 1) -> torch.Tensor:
    """Fixed token ids (batch × (prompt + generated)): the prompt to prefill and, after it, the tokens fed back one
    at a time. Fixed instead of sampled, so every model does the same work whatever it would have predicted. The
    prompt is shortened where prompt and generated tokens would pass the model's positions (GPT-2's 1024)."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions:
        tokens = max(1, min(tokens, int(positions) - new_tokens))
    return latency_input(model, batch_size, tokens + new_tokens, seed)["input_ids"]


def decode_ms(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, int]:
    """Milliseconds per generated token with the key/value cache, and the cache's length after the last one.

    The prompt (all but the last ``new_tokens`` columns of ``ids``) is prefilled
    untimed; then each step feeds one token and the cache, as generation does.
    """
    import torch

    from harness.devices import synchronize

    prompt = ids.shape[1] - new_tokens
    mask = torch.ones_like(ids)
    cache_argument = _cache_argument(model)
    output = model(input_ids=ids[:, :prompt], attention_mask=mask[:, :prompt], use_cache=True)
    cache = cache_of(output)
    synchronize(ids.device)
    start = time.perf_counter()
    for step in range(prompt, ids.shape[1]):
        output = model(input_ids=ids[:, step : step + 1], attention_mask=mask[:, : step + 1], use_cache=True,
                       **{cache_argument: cache})
        cache = cache_of(output)
    synchronize(ids.device)
    elapsed = (time.perf_counter() - start) * 1000
    length = cache.get_seq_length() if hasattr(cache, "get_seq_length") else cache[0][0].shape[-2]  # legacy tuples
    return elapsed / max(new_tokens, 1), int(length)


def _cache_argument(model: nn.Module) -> str:
    """The keyword a model's forward takes its key/value cache by: ``cache`` from transformers 5.2x (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output: object) -> object:
    """The key/value cache a forward returned, under either name (see :func:`_cache_argument`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def dense_and_pruned_decode(dense: nn.Module, model: nn.Module, ids: torch.Tensor, new_tokens: int,
                            repeats: int = 5, warmup: int = 1) -> tuple[Timing, Timing]:
    """Decode timing (ms per token) of the dense model and of ``model``, in alternation, as the progress phase
    ``decode timing``. Raises if a model's cache did not grow by exactly one token per step."""
    from harness import progress

    models = [dense] if model is dense else [dense, model]
    expected = ids.shape[1]

    def run(one: nn.Module) -> float:
        per_token, length = decode_ms(one, ids, new_tokens)
        if length != expected:
            raise RuntimeError(f"decode: the key/value cache holds {length} tokens after {expected}: not one a step")
        return per_token

    with progress.phase(f"decode timing (batch {ids.shape[0]})", total=1) as step:
        timings = _alternate([lambda one=one: run(one) for one in models], models, repeats, warmup)
        step()
    return timings[0], timings[-1]


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each tensor once: tied embeddings share storage)."""
    seen: set[int] = set()
    return sum(_tensor_bytes(tensor, seen) for tensor in [*model.parameters(), *model.buffers()])


def _tensor_bytes(tensor: torch.Tensor, seen: set[int]) -> int:
    """A tensor's bytes not yet ``seen``; a wrapper tensor (torch's semi-structured sparse weight, whose own data
    pointer is null) by the tensors it holds: the packed values and their metadata."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        inner = [getattr(tensor, name) for name in names]
        return sum(_tensor_bytes(t, seen) for t in inner if t is not None)
    if tensor.data_ptr() in seen:
        return 0
    seen.add(tensor.data_ptr())
    return tensor.numel() * tensor.element_size()


def inference_memory(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int | None:
    """Peak memory one forward pass adds (bytes): CUDA's peak allocation on a GPU; on Linux, the peak resident
    set over what was resident before (the free heap given back first); ``None`` where it cannot be read.

    A pass of its own, untimed: the timed passes alternate two models, whose peaks would mix.
    """
    import torch

    from harness.devices import device_of

    device = device_of(model)
    if device.type not in ("cpu", "cuda"):
        return None  # no counter of a pass's own peak there (MPS)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            model(**inputs)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from harness.modeling import release_memory

    release_memory()
    before = _resident_peak(reset=True)
    if before is None:
        return None
    with torch.inference_mode():
        model(**inputs)
    after = _resident_peak()
    return None if after is None else max(0, after - before)


def _resident_peak(reset: bool = False) -> int | None:
    """This process's peak resident set (VmHWM, bytes), first reset to the current one with ``reset`` (Linux)."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # "reset the peak resident set size ("high water mark") to the current value"
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def speed_and_memory(dense: nn.Module, model: nn.Module, inputs: dict[str, torch.Tensor],
                     decode_inputs: dict[int, torch.Tensor], new_tokens: int) -> dict[str, float | str]:
    """A row's speed and memory columns: prefill latency with its spread and speedup, decode ms per token and
    speedup at each batch of ``decode_inputs`` (empty where none: not a causal LM, or decoding is off), the
    model's bytes and the peak memory its prefill adds. Timed against ``dense`` in alternation."""
    reference, prefill = dense_and_pruned(dense, model, inputs)
    columns: dict[str, float | str] = {
        "latency_ms": round(prefill.median_ms, 3),
        "latency_iqr_ms": round(prefill.iqr_ms, 3),
        "speedup": round(reference.median_ms / prefill.median_ms, 4),
    }
    for batch in DECODE_BATCHES:
        ids = decode_inputs.get(batch)
        if ids is None:
            columns[f"decode_ms_b{batch}"] = columns[f"decode_speedup_b{batch}"] = ""
            continue
        dense_step, step = dense_and_pruned_decode(dense, model, ids, new_tokens)
        columns[f"decode_ms_b{batch}"] = round(step.median_ms, 3)
        columns[f"decode_speedup_b{batch}"] = round(dense_step.median_ms / step.median_ms, 4)
    peak = inference_memory(model, inputs)
    columns["model_mb"] = round(model_bytes(model) / 2**20, 3)
    columns["peak_mem_mb"] = "" if peak is None else round(peak / 2**20, 3)
    return columns


def kernel_signature(model: nn.Module) -> str | None:
    """A digest of what decides the work of a forward pass: module types and settings (``repr``), every parameter's
    and buffer's shape, dtype and device, the attention kernel. ``None`` when a module has a forward hook, which may
    add work a signature cannot see. Zeros in place (unstructured, N:M) leave it unchanged: dense kernels do the
    same work on them."""
    import hashlib
    import itertools

    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None
    parts = [repr(model), str(getattr(getattr(model, "config", None), "_attn_implementation", ""))]
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    parts.extend(sorted(f"{name}:{tuple(t.shape)}:{t.dtype}:{t.device}:{type(t).__name__}" for name, t in tensors))  # a mask made
    # permanent registers its weight again, last: the order of registration is not work
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class SharedTimings:
    """The speed and memory columns of each kernel signature timed in a unit, with the run id of the row that
    measured them: a later model of the same signature runs the same kernels, so it gets those columns instead of
    being timed again (its row says ``latency_from``). Speedups stay against the unit's dense model."""

    seen: dict[str, tuple[str, dict[str, float | str]]] = field(default_factory=dict)

    def columns(self, run_id: str, dense: nn.Module, model: nn.Module, inputs: dict[str, torch.Tensor],
                decode_inputs: dict[int, torch.Tensor], new_tokens: int) -> tuple[dict[str, float | str], str | None]:
        """The row's speed columns and the run id they were measured for (``None``: measured now)."""
        signature = kernel_signature(model)
        if signature is not None and signature in self.seen:
            source, columns = self.seen[signature]
            return dict(columns), source
        columns = speed_and_memory(dense, model, inputs, decode_inputs, new_tokens)
        if signature is not None:
            self.seen[signature] = (run_id, columns)
        return columns, None
