"""On-disk cache of fine-tuned models and importance scores, keyed by content hash.

A grid re-run (or a resume after a crash) must not pay again for what it
already computed: each fine-tuned base and each scoring pass is stored as
safetensors under a key that hashes everything that determines it (model
fingerprint, task data, plugin options, seed, budget, library versions).
Writes go to a temporary file renamed into place, so a killed run never
leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import atomic
from harness.models import sha256_of

if TYPE_CHECKING:
    import torch
    from torch import nn


def default_root() -> Path:
    """``$HARNESS_CACHE``, else ``$XDG_CACHE_HOME/prune-harness``, else ``~/.cache/prune-harness``."""
    if os.environ.get("HARNESS_CACHE"):
        return Path(os.environ["HARNESS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prune-harness"


def digest(parts: Any) -> str:
    """A stable content hash of JSON-able parts, with the versions of the libraries that compute results."""
    import torch
    import transformers

    from harness import __version__

    versions = {"harness": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    blob = json.dumps({"parts": parts, "versions": versions}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint_folder(location: str) -> str:
    """Names and content hashes of a local model folder's files (hub ids: the id itself).

    Content, not modification times: the same weights installed into another
    environment (a new venv, a copy on another machine) must give the same
    cache keys and run ids, or a resumed grid redoes every fine-tune and cell.
    """
    folder = Path(location)
    if not folder.is_dir():
        return location
    files = sorted((p.name, sha256_of(p)) for p in folder.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


class Cache:
    """Fine-tuned models and scores by key; ``root=None`` disables it (every lookup misses)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.counts: Counter[str] = Counter()
        if root is not None and root.is_dir():  # shared between machines maybe: only hour-old leftovers go
            for folder in root.iterdir():
                atomic.sweep(folder, min_age_s=3600)

    def _path(self, kind: str, key: str, suffix: str = "") -> Path:
        assert self.root is not None
        return self.root / kind / f"{key}{suffix}.safetensors"

    def _meta(self, path: Path) -> dict[str, Any]:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return json.loads((handle.metadata() or {}).get("harness", "{}"))

    def load_model(self, key: str, model: nn.Module) -> dict[str, Any] | None:
        """Load cached weights into ``model`` (same architecture); their metadata, or None on a miss."""
        from safetensors.torch import load_model

        path = self._path("models", key) if self.root else None
        if path is None or not path.exists():
            self.counts["models_missed"] += 1
            return None
        load_model(model, str(path), strict=True)
        self.counts["models_hit"] += 1
        return self._meta(path)

    def save_model(self, key: str, model: nn.Module, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_model

        if self.root is not None:
            metadata = {"harness": json.dumps(meta)}
            atomic.write(self._path("models", key), lambda tmp: save_model(model, str(tmp), metadata=metadata))

    def load_tensors(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        from safetensors.torch import load_file

        path = self._path(kind, key) if self.root else None
        if path is None or not path.exists():
            self.counts[f"{kind}_missed"] += 1
            return None
        self.counts[f"{kind}_hit"] += 1
        return load_file(str(path)), self._meta(path)

    def save_tensors(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        if self.root is not None:
            plain = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
            metadata = {"harness": json.dumps(meta)}
            atomic.write(self._path(kind, key), lambda tmp: save_file(plain, str(tmp), metadata=metadata))
