"""Task ``synthetic``: a deterministic sentiment task the harness generates itself.

It lets ``harness bench`` run on a fresh machine with no download. Sentences
combine polarity words with negation ("the plot was not dull") and contrast
("the cast was weak but the ending was superb"), so the label depends on
word order and scope: attention heads matter, and pruning the wrong ones hurts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from harness import Options, Split, Task, TaskData, TaskRequest, hookimpl, option

SUBJECTS = (
    "the movie", "this film", "the plot", "the acting", "the soundtrack", "the ending",
    "the cast", "this story", "the script", "the dialogue", "the pacing", "the visuals",
)
VERBS = ("was", "is", "seemed", "felt", "looked")
POSITIVE = (
    "good", "great", "wonderful", "brilliant", "charming", "delightful", "moving",
    "superb", "clever", "enjoyable", "fresh", "beautiful", "funny", "solid",
)
NEGATIVE = (
    "bad", "awful", "boring", "dull", "terrible", "clumsy", "tedious", "weak",
    "messy", "bland", "predictable", "ugly", "lifeless", "silly",
)
NEGATIONS = ("not", "never", "hardly")
INTENSIFIERS = ("", "", "really", "truly", "quite", "very")
SIZES = {"train": 4000, "validation": 800}


def _clause(rng: random.Random) -> tuple[str, int]:
    """One clause and its sentiment (1 positive), flipped by a negation."""
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    negated = rng.random() < 0.4
    words = [rng.choice(SUBJECTS), rng.choice(VERBS)]
    if negated:
        words.append(rng.choice(NEGATIONS))
    words += [rng.choice(INTENSIFIERS), adjective]
    return " ".join(w for w in words if w), int(positive != negated)


def _sentence(rng: random.Random) -> tuple[str, int]:
    first, label = _clause(rng)
    if rng.random() < 0.35:  # contrast: the clause after "but" decides
        second, label = _clause(rng)
        return f"{first} but {second}", label
    return first, label


def generate(seed: int = 2019) -> dict[str, Split]:
    """Disjoint train and validation splits, the same on every machine for a given seed."""
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    total = sum(SIZES.values())
    while len(seen) < total:
        text, label = _sentence(rng)
        seen.setdefault(text, label)
    items = list(seen.items())
    splits, start = {}, 0
    for name, size in SIZES.items():
        chunk = items[start : start + size]
        splits[name] = Split(tuple(t for t, _ in chunk), tuple(label for _, label in chunk))
        start += size
    return splits


@dataclass(frozen=True)
class SyntheticOptions(Options):
    """Options of ``synthetic``: any data seed makes a task."""

    data_seed: int = option(2019, help="seed of the generated sentences")
    train_steps: int = option(200, low=0, help="default fine-tuning budget in steps (--train-steps overrides)")


def load(request: TaskRequest) -> TaskData:
    options = SyntheticOptions.of(request.options)
    splits = generate(options.data_seed)
    names = ("negative", "positive")
    return TaskData(splits["train"], splits["validation"], names, "accuracy", max_length=32,
                    train_steps=options.train_steps)


@hookimpl
def harness_tasks() -> list[Task]:
    return [
        Task(
            name="synthetic",
            load=load,
            description="generated sentiment with negation and contrast (no download; the default)",
            options=SyntheticOptions(),
        )
    ]
