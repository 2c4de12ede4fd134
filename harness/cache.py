"""On-disk cache of fine-tuned models and importance scores, keyed by content hash, verified on every read.

A grid re-run (or a resume after a crash) must not pay again for what it
already computed: each fine-tuned base and each scoring pass is stored as
safetensors under a key that hashes everything that determines it (model
fingerprint, task data, plugin options and code, seed, budget, library
versions). Writes go to a temporary file renamed into place, so a killed run
never leaves a half-written entry. Every entry carries a sha256 of its tensors
and metadata: an entry that does not match (a flipped bit, a truncated copy, an
edited tensor) is never used: it is reported, removed and recomputed. A cache
that cannot be written (read-only, disk full) costs only the reuse: the run goes
on from memory with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness import atomic, identity
from harness.models import sha256_of

if TYPE_CHECKING:
    import torch
    from torch import nn

META_KEY = "harness"
CHECKSUM_KEY = "harness_sha256"


def default_root() -> Path:
    """``$HARNESS_CACHE``, else ``$XDG_CACHE_HOME/prune-harness``, else ``~/.cache/prune-harness``."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prune-harness"


def digest(parts: Any) -> str:
    """A stable content hash of JSON-able parts, with the library versions, the harness's own code and torch's
    thread count (:func:`_threads`).

    The versions are the ones ``commands.json`` records (:func:`provenance.versions`:
    python, torch, transformers, peft, datasets, scikit-learn, numpy, ...).
    Plugins' code identities are part of ``parts`` (see :mod:`harness.identity`):
    a changed line of the harness or of a plugin gives new keys, never a stale hit.
    """
    versions = {**_versions(), "harness_code": identity.core_code(), "threads": _threads()}
    blob = json.dumps({"parts": parts, "versions": versions}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _threads() -> int:
    """torch's intra-op threads: the same step on another count of threads computes other bits (a MiniLM-sized
    fine-tune, 5 steps on this CPU: weights 2e-6 apart in float32, 8e-4 in bfloat16; the default grid in bfloat16 on
    1 and 2 threads: 71 of 98 scores differ), so a result is reused only by runs on as many threads."""
    import torch

    return torch.get_num_threads()


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    from harness import provenance

    return provenance.versions()


def fingerprint_folder(location: str) -> str:
    """Names and content hashes of a local model folder's files, or of one model file (hub ids: the id itself).

    Content, not modification times: the same weights installed into another
    environment (a new venv, a copy on another machine) must give the same
    cache keys and run ids, or a resumed grid redoes every fine-tune and cell.
    A single file (a GGUF model in a package's folder) counts alone, not its neighbours.
    """
    folder = Path(location)
    if folder.is_file():
        files = [(folder.name, sha256_of(folder))]
    elif folder.is_dir():
        files = sorted((p.name, sha256_of(p)) for p in folder.iterdir() if p.is_file())
    else:
        return location
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def checksum(tensors: dict[str, torch.Tensor], meta_text: str) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (by name) and the metadata text."""
    import torch

    h = hashlib.sha256(meta_text.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        h.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        if tensor.numel():
            h.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


class CorruptEntry(Exception):
    """A cache entry that cannot be read or does not match its checksum."""


def warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr, flush=True)


class Cache:
    """Fine-tuned models and scores by key; ``root=None`` disables it (every lookup misses)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.counts: Counter[str] = Counter()
        if root is not None and root.is_dir():  # shared between machines maybe: only hour-old leftovers go
            for folder in root.iterdir():
                try:
                    atomic.sweep(folder, min_age_s=3600)
                except OSError:  # a read-only cache: nothing to clean, nothing will be written
                    pass

    def path(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / f"{key}.safetensors"

    def _read(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The entry's tensors and metadata, after checking its checksum; :class:`CorruptEntry` otherwise."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as handle:
                header = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            meta_text = header[META_KEY]
            meta = json.loads(meta_text)
        except Exception as error:  # truncated file, bad header, missing metadata: all mean "recompute"
            raise CorruptEntry(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
        if header.get(CHECKSUM_KEY) != checksum(tensors, meta_text):
            raise CorruptEntry("its content does not match its checksum" if CHECKSUM_KEY in header
                               else "it has no checksum (written by an older harness)")
        return tensors, meta

    def load_tensors(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """A verified entry, or None (a miss, or a corrupt entry, which is reported and removed)."""
        path = self.path(kind, key) if self.root else None
        if path is None or not path.exists():
            self.counts[f"{kind}_missed"] += 1
            return None
        try:
            found = self._read(path)
        except CorruptEntry as error:
            self.discard(path, str(error))
            self.counts[f"{kind}_missed"] += 1
            return None
        self.counts[f"{kind}_hit"] += 1
        return found

    def discard(self, path: Path, why: str) -> None:
        """Report a bad entry and remove it, so it is recomputed and never read again."""
        self.counts["corrupt_entries"] += 1
        warn(f"cache entry {path} is not usable ({why}): recomputing it")
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass

    def save_tensors(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Store an entry with its checksum; a write that fails is a warning: the run carries on from memory."""
        from safetensors.torch import save_file

        if self.root is None:
            return
        plain = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        meta_text = json.dumps(meta)
        metadata = {META_KEY: meta_text, CHECKSUM_KEY: checksum(plain, meta_text)}
        path = self.path(kind, key)
        try:
            atomic.write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))
        except OSError as error:
            self.counts["cache_write_failed"] += 1
            warn(f"cannot write cache entry {path} ({type(error).__name__}: {error}); carrying on without it")

    def load_model(self, key: str, model: nn.Module,
                   before: Callable[[nn.Module, dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Load a verified cached state into ``model`` (same architecture); its metadata, or None on a miss.

        ``before(model, meta)`` first makes the model what was cached, beyond its weights.
        """
        found = self.load_tensors("models", key)
        if found is None:
            return None
        state, meta = found
        try:
            if before is not None:
                before(model, meta)
            model.load_state_dict(state, strict=True)
        except Exception as error:  # right checksum, wrong architecture: a key collision or a foreign file
            self.counts["models_hit"] -= 1
            self.discard(self.path("models", key), f"{type(error).__name__}: {str(error).splitlines()[0]}")
            return None
        return meta

    def save_model(self, key: str, model: nn.Module, meta: dict[str, Any]) -> None:
        self.save_tensors("models", key, untied(model.state_dict()), meta)


def untied(tensors: dict[str, Any]) -> dict[str, Any]:
    """Copies of tensors that share storage (tied weights), which safetensors refuses to save twice."""
    seen: set[int] = set()
    plain = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        plain[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return plain
