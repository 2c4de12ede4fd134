"""Task ``wikitext2``: WikiText-2 perplexity as the LLM pruning papers measure it (SparseGPT, Wanda).

The whole test split is one document (its lines joined with ``"\\n\\n"``, as the
papers' evaluation code does), tokenized once and cut into non-overlapping
windows of ``max_length`` tokens; the score is the perplexity over all of them
(``--eval-limit N``: the first N). The validation split, joined the same way
and cut into windows of the same length, is the calibration text: scorers get
``--calib-examples`` windows drawn with the row's seed. Both come through the
harness's causal-LM ``Blocks`` feed: a split holding a single text is exactly
"join, tokenize once, cut" (the eos it appends after the document only ever
fills the last window's last token).

Pruning a pretrained LLM needs no fine-tune: the task's default budget is 0
steps, so the dense row is the pretrained model and the pruned rows are its
weights pruned (``--train-steps N`` fine-tunes on the validation text first).

Local (``--data-dir DIR``): ``DIR/wikitext2/valid.txt`` and ``test.txt``, one
line per row of the hub's split (``../shared/data`` holds the word-level
tokenized copy, rare words as ``<unk>``: its numbers are not those of the raw
version the papers use). Without a local copy: the hub's
``Salesforce/wikitext`` / ``wikitext-2-raw-v1`` (validation and test splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness import Options, Split, Task, TaskData, TaskRequest, hookimpl, option
from harness.errors import UsageError

FOLDER = "wikitext2"
FILES = {"calibration": "valid.txt", "evaluation": "test.txt"}
HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
HUB_SPLITS = {"calibration": "validation", "evaluation": "test"}
EVALUATION = ("the test split joined with \\n\\n, tokenized once, non-overlapping windows from its start: "
              "eval_examples of them, the whole split unless --eval-limit")
CALIBRATION = "validation split joined the same way, in windows of the same length: --calib-examples of them, seeded"


@dataclass(frozen=True)
class WikitextOptions(Options):
    """Options of ``wikitext2``: the window length is the protocol's one free number."""

    max_length: int = option(512, low=2, help="tokens per window, evaluated and calibration (the papers use 2048)")
    train_steps: int = option(0, low=0, help="default fine-tuning budget: 0 prunes the pretrained weights")


def file_rows(path: Path) -> list[str]:
    """A split file's lines as the hub's rows: each with its newline, a blank line as ``""``."""
    with path.open(encoding="utf-8") as handle:
        return [line if line.strip() else "" for line in handle]


def document(rows: list[str]) -> str:
    """A split as one text, the way SparseGPT and Wanda join it before tokenizing."""
    return "\n\n".join(rows)


def local_rows(data_dir: Path) -> dict[str, list[str]] | None:
    """Both splits from ``<data_dir>/wikitext2``, or ``None`` when that folder is not there."""
    folder = data_dir / FOLDER
    if not folder.is_dir():
        return None
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"wikitext2: {folder} has no {' or '.join(missing)} (it needs valid.txt and test.txt)")
    return {role: file_rows(folder / name) for role, name in FILES.items()}


def hub_rows(why: str) -> dict[str, list[str]]:
    """Both splits from the hub (or a warm ``datasets`` cache); ``why`` says where no local copy was."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return {role: list(datasets.load_dataset(*HUB, split=split)["text"]) for role, split in HUB_SPLITS.items()}
    except Exception as error:  # offline, hub down, no such dataset: all mean "give local files"
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise UsageError(f"wikitext2: {why}, and {'/'.join(HUB)} cannot be loaded from the hub ({first}); "
                         f"pass --data-dir DIR with DIR/{FOLDER}/valid.txt and test.txt") from None


def load(request: TaskRequest) -> TaskData:
    options = WikitextOptions.of(request.options)
    rows = local_rows(request.data_dir) if request.data_dir is not None else None
    source = f"local {FOLDER}/valid.txt, test.txt"
    if rows is None:
        where = f"no {request.data_dir / FOLDER}" if request.data_dir is not None else "no --data-dir"
        rows, source = hub_rows(where), f"hub {'/'.join(HUB)}"
    splits = {role: Split((document(lines),), ()) for role, lines in rows.items()}
    protocol = {"source": source, "evaluation": EVALUATION, "window_tokens": options.max_length,
                "calibration": CALIBRATION}
    return TaskData(splits["calibration"], splits["evaluation"], (), "perplexity", options.max_length,
                    options.train_steps, "causal-lm", protocol=protocol)


@hookimpl
def harness_tasks() -> list[Task]:
    description = "WikiText-2 perplexity: whole test split in non-overlapping windows (the LLM pruning protocol)"
    return [Task("wikitext2", load, description, WikitextOptions())]
