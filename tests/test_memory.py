"""Memory: a unit's process holds what its tensors need, not what the C allocator kept (see benchmarks/peak_rss.py).

A MiniLM fine-tune on SST-2 kept 1462 MB after training where its tensors needed
596 MB, and peaked 90 MB higher than it must, because glibc served its
activations, whose size changes with every batch's length, from a heap it
fragments and never shrinks. These
tests measure resident memory in a fresh interpreter (the allocator's state is
per process) on a toy model that is cheap to run and heavy to remember.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and /proc")

PRELUDE = r"""
import json, threading, time, types
import psutil, torch
from torch import nn
import transformers.optimization  # train_adamw's schedule: imported before measuring
from harness import modeling
from harness.records import TrainRequest

PROCESS = psutil.Process()
MB = 2 ** 20


def rss():
    return PROCESS.memory_info().rss


class Toy(nn.Module):
    # Activations of [32, tokens, 1024] floats (1-12 MB each, a few params): memory without compute.
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 1024)
        self.head = nn.Linear(1024, 2)

    def forward(self, input_ids, attention_mask=None):
        x = self.embed(input_ids)
        for _ in range(4):
            x = x * torch.sigmoid(x) + x
        return types.SimpleNamespace(logits=self.head(x.mean(1)))


def batches(steps, longest=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tokens = int(torch.randint(8, longest + 1, (1,), generator=generator))  # a new length each batch
        yield {"input_ids": torch.randint(0, 50, (32, tokens), generator=generator), "labels": torch.arange(32) % 2}


def train(model, steps, longest=96):
    options = {"weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0}
    return modeling.train_adamw(TrainRequest(model, batches(steps, longest), steps, 1e-3, 0, options))


torch.manual_seed(0)
"""

TRAINING = PRELUDE + r"""
model = Toy()
train(model, 2, longest=8)  # torch's one-off initialisations (autograd, kernels), on small batches: not measured
freed = torch.empty(4 << 20)
del freed  # as loading a model does: a freed 16 MB block lifts glibc's mmap threshold, activations go to the heap
peak, stop = [0], []


def sample():
    while not stop:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)


before = rss()
watcher = threading.Thread(target=sample, daemon=True)
watcher.start()
train(model, 30)
after = rss()
stop.append(True)
watcher.join()
largest = 32 * 96 * 1024 * 4  # one activation of the longest batch
print(json.dumps({"retained_mb": (after - before) / MB, "peak_mb": (peak[0] - before) / MB,
                  "largest_mb": largest / MB}))
"""

def run_script(script: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@linux
def test_training_loop_holds_its_tensors_only() -> None:
    """train_adamw on batches of changing length: its peak stays near its live activations, and it keeps nothing.

    Live at the peak: what one step of the longest batch saves for its backward
    (about 11 activations of 12 MB). Measured (MB above the start, peak / kept
    after training): glibc's default 180 / 127; a trim after training alone
    218-243 / 0; the policy (4 MiB threshold and trim) 138-169 / 0.
    """
    result = run_script(TRAINING)
    assert result["retained_mb"] < 40, result
    assert result["peak_mb"] < 16.5 * result["largest_mb"], result


def test_every_unit_gets_the_heap_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a unit's model (the first thing every unit does) sets the policy of its process."""
    from harness import modeling, models

    calls: list[tuple] = []
    monkeypatch.setattr(modeling, "bound_heap", lambda *args: calls.append(args) or True)
    monkeypatch.setattr(models, "load_classifier", lambda *args: ("model", "tokenizer"))
    monkeypatch.setattr(models, "load_causal_lm", lambda *args: ("lm", "tokenizer"))
    source = models.ModelSource("toy", "/nowhere")
    for kind, expected in (("classification", "model"), ("causal-lm", "lm")):
        data = SimpleNamespace(kind=kind, label_names=("a", "b"))
        assert models.load_for_task(source, data, 0)[0] == expected  # type: ignore[arg-type]
    assert len(calls) == 2


@linux
def test_a_threshold_the_user_gave_glibc_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    """MALLOC_MMAP_THRESHOLD_=1048576 (glibc's own knob) trades training speed for a lower peak: not overridden."""
    from harness import modeling

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert modeling.bound_heap()  # the policy applies by default
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert not modeling.bound_heap()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    assert not modeling.bound_heap()
