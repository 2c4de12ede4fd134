"""Where a grid's tensors live and in which precision: ``--device`` and ``--dtype``, through every stage.

One policy for all stages, so that no GPU-only branch exists beyond
synchronisation and memory counters: the model and every batch live on the
device; parameters stay float32 while anything trains or scores (fine-tuning,
scorers, pruners, recovery), which then runs under autocast to the chosen
dtype; evaluation and latency run on a copy cast to that dtype, as a
deployment serves it. ``float32`` changes nothing: no autocast, no copy.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from harness.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

DTYPES = ("float32", "bfloat16", "float16")
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU flags of native bfloat16 matmuls (x86)
DEVICE_HELP = "auto (cuda, else mps, else cpu), cpu, cuda, cuda:INDEX or mps"


def resolve_device(name: str) -> str:
    """The device a run uses, checked against this machine: one line of error (exit 2) when it is not here."""
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    kind, colon, index = text.partition(":")
    if colon and not index.isdigit():  # "cuda:" or "cuda:x" would fail later, in torch, with a traceback
        raise UsageError(f"--device {name!r}: not a device (use {DEVICE_HELP})")
    if kind == "cpu" and not index:
        return "cpu"
    if kind == "mps" and not index:
        if not _mps_available():
            raise UsageError("--device mps: this machine has no MPS (Apple GPU) device")
        return "mps"
    if kind != "cuda":
        raise UsageError(f"--device {name!r}: not a device (use {DEVICE_HELP})")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__})")
    if index and int(index) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(name: str, device: str) -> str:
    """``name``, or for ``auto`` bfloat16 where ``device`` computes it natively (a CUDA GPU that supports it, a CPU
    with AMX or AVX-512 bfloat16) and float32 elsewhere, where bfloat16 is emulated and slower; else a one-line
    error."""
    if name == "auto":
        return "bfloat16" if _native_bf16(device) else "float32"
    if name not in DTYPES:
        raise UsageError(f"--dtype {name!r}: not a dtype (use auto, {', '.join(DTYPES)})")
    return name


def _native_bf16(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and bool(set(cpu_flags()) & set(FAST_BF16_FLAGS))


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; none elsewhere)."""
    return tuple(_cpuinfo("flags").split())


def _cpuinfo(key: str) -> str:
    """A field of the first CPU in Linux's ``/proc/cpuinfo``; "" where there is none."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def describe(device: str) -> str:
    """The hardware behind a device, for the row (``NVIDIA H200``, the CPU's model name)."""
    import platform

    import torch

    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(torch.device(device)))
    if device == "mps":
        return "Apple MPS"
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "cpu"


@dataclass(frozen=True)
class Placement:
    """A run's device and dtype, and what each stage does with them."""

    device: str = "cpu"
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    @property
    def reduced(self) -> bool:
        return self.dtype != "float32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Training and scoring: float32 parameters, matmuls in the dtype (a no-op for float32).

        One context spans a whole stage (a training loop), so autocast's cache of cast weights is off: with it, the
        weights cast at the first step would be reused after every optimizer step, and nothing would learn.
        """
        if not self.reduced:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.torch_dtype, cache_enabled=False)

    def batch(self, batch: Any) -> Any:
        """A batch (a mapping of tensors) on the device; anything that is not a tensor stays as it is."""
        return {key: _moved(value, self.device) for key, value in batch.items()}

    def batches(self, batches: Any) -> list[Any]:
        return [self.batch(batch) for batch in batches]

    def stream(self, batches: Any) -> Iterator[Any]:
        """Training batches moved one at a time, as the loop takes them (never all on the device at once)."""
        for batch in batches:
            yield self.batch(batch)

    def served(self, model: nn.Module, copy: bool) -> nn.Module:
        """The model as evaluation and latency see it: cast to the dtype (a copy with ``copy``, for a model that is
        still to be scored or pruned); float32 returns the model itself."""
        if not self.reduced:
            return model
        import copy as copying

        target = copying.deepcopy(model) if copy else model
        return target.to(self.torch_dtype).eval()


def _moved(value: Any, device: str) -> Any:
    import torch

    return value.to(device) if isinstance(value, torch.Tensor) else value


def synchronize(device: Any) -> None:
    """Wait for the device's queued work, so a wall clock read after it times the work, not its launch."""
    import torch

    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def device_of(model: nn.Module) -> torch.device:
    """Where a model's parameters live (CPU for a model without any)."""
    import torch

    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """A context where autocast is off on ``device``'s type: what is computed inside a stage that runs under
    ``--dtype`` autocast and needs precision (XᵀX, Cholesky factors, OBS updates, a merged low-rank update)
    stays float32."""
    import torch

    try:
        return torch.autocast(device_type=torch.device(device).type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing can be autocast there either
        return contextlib.nullcontext()
