"""torch's thread count is part of every key: another count computes other bits, so its results are not reused."""

from __future__ import annotations

import torch

import harness
from harness.cache import digest

FAST = dict(plugins=["magnitude", "unstructured"], sparsities=[0.5], train_steps=2, calib_examples=8, eval_limit=16,
            latency_batch=2, latency_tokens=8, isolation="none", progress=False, baselines=False, dtype="float32")


def on_threads(threads: int, run):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run()
    finally:
        torch.set_num_threads(before)


def test_keys_differ_by_thread_count() -> None:
    one, two = on_threads(1, lambda: digest({"a": 1})), on_threads(2, lambda: digest({"a": 1}))
    assert one != two and one == on_threads(1, lambda: digest({"a": 1}))


def test_a_run_on_other_threads_recomputes_and_one_on_the_same_reuses(tiny_model_dir, tmp_path) -> None:
    model = str(tiny_model_dir())

    def bench():
        return harness.run(models=[model], out=tmp_path / "out", **FAST)

    first = on_threads(1, bench)
    other = on_threads(2, bench)
    again = on_threads(1, bench)
    assert first.counts["fine_tunes_run"] == 1 and len(first.rows) == 2
    assert other.counts["fine_tunes_run"] == 1 and other.counts["cells_skipped"] == 0 and len(other.rows) == 2
    assert set(other.rows.run_id).isdisjoint(first.rows.run_id)
    assert again.counts["cells_skipped"] == 2 and len(again.rows) == 0
