"""Task ``synthetic``: deterministic aspect-based sentiment the harness generates itself.

It lets ``harness bench`` run on a fresh machine with no download, and it is hard
enough to rank pruning methods. Each example is a pair: a review that judges one
or two aspects of a film (``text_a``) and the aspect asked about (``text_b``);
the label is that aspect's sentiment. The same review is asked about different
aspects with different answers, so the model must bind the question to the right
clause across distractors (attention), then read the clause's scope: negation
("was not dull"), double negation ("was not without flaws" is negative), nouns
present or lacking ("lacked wit"), and predicates shared by two aspects ("neither
the plot nor the cast was good"). Every example is answerable: no label noise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

from harness import Options, Split, Task, TaskData, TaskRequest, hookimpl, option

ASPECTS = (
    "plot", "acting", "music", "ending", "cast", "script", "dialogue", "pacing",
    "humor", "editing", "story", "direction", "sound", "lighting", "villain", "camera",
)
POSITIVE = tuple("""
    good great wonderful brilliant charming delightful moving superb clever enjoyable fresh beautiful funny solid
    excellent fantastic terrific splendid marvelous magnificent lovely stunning gorgeous elegant graceful witty smart
    sharp gripping thrilling exciting engaging compelling absorbing entertaining amusing hilarious touching powerful
    memorable remarkable impressive outstanding exceptional polished original creative imaginative inspired lively
    vibrant energetic warm tender sincere honest thoughtful intelligent subtle rich lush striking vivid crisp tight
    confident assured strong effective satisfying pleasant sweet refreshing fascinating perfect flawless stellar
""".split())
NEGATIVE = tuple("""
    bad awful boring dull terrible clumsy weak messy bland predictable ugly lifeless silly horrible dreadful poor
    shallow flat stale tired lazy sloppy confusing pointless annoying irritating stiff wooden awkward cheap generic
    derivative slow lame crude vulgar offensive painful unbearable repetitive hollow empty disappointing frustrating
    ridiculous absurd hideous careless rushed forced stupid dumb fake worthless useless pathetic miserable nasty
    disgusting gross rotten confused flawed broken ruined dated wasted failed unpleasant hopeless disastrous
    embarrassing inferior ineffective trivial superficial sterile mechanical chaotic catastrophic irrelevant
""".split())
RARE_POSITIVE = tuple("""
    sublime exquisite deft poignant luminous taut incisive rousing spirited sparkling dazzling masterly heartwarming
    endearing affecting evocative mesmerizing transcendent superlative commendable admirable laudable nimble playful
    tasteful radiant soulful triumphant riveting captivating heartfelt inventive joyful uplifting breathtaking masterful
""".split())  # rarer words only validation reviews use: the model must bring what it learned in pretraining
RARE_NEGATIVE = tuple("""
    turgid leaden ponderous mawkish hackneyed banal stilted tepid listless pedestrian perfunctory lackluster insipid
    saccharine schmaltzy glib bombastic tiresome inane idiotic wretched shoddy laborious trite tedious lousy mediocre
    forgettable muddled incoherent pretentious cheesy corny cliched plodding dreary
""".split())
GOOD_NOUNS = ("charm", "wit", "heart", "energy", "style", "warmth", "grace", "depth", "soul", "spark", "flair", "passion")
BAD_NOUNS = ("flaws", "mistakes", "problems", "gaps", "errors", "faults", "holes", "weaknesses", "issues", "defects")
VERBS = ("was", "seemed", "felt")
NEGATED = ("was not", "was never", "was hardly", "never seemed", "never felt")
INTENSIFIERS = ("",) * 42 + ("really", "truly", "quite", "very", "rather", "fairly", "pretty", "so", "extremely",
                "incredibly", "thoroughly", "utterly", "deeply", "genuinely")
HAS = ("had", "was full of", "was not without", "never lacked")
LACKS = ("lacked", "had no", "was without", "was free of")
CONNECTORS = ("and", "but", "while", "although", "whereas", "yet")
ASPECT_COUNTS = {1: 0.3, 2: 0.7}  # how many aspects a review judges
SIZES = {"train": 4000, "validation": 800}  # question-review pairs
MAX_LENGTH = 40  # MiniLM tokens of the longest pair, with room


class Lexicon(NamedTuple):
    """The sentiment words a split draws from."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    good_nouns: tuple[str, ...]
    bad_nouns: tuple[str, ...]


TRAINING = Lexicon(POSITIVE, NEGATIVE, GOOD_NOUNS, BAD_NOUNS)
VALIDATION = Lexicon(POSITIVE + RARE_POSITIVE, NEGATIVE + RARE_NEGATIVE, GOOD_NOUNS, BAD_NOUNS)


def _adjective(rng: random.Random, words: Lexicon, plural: bool = False) -> tuple[str, bool]:
    """'was really dull' / 'was not dull' and whether it is positive."""
    positive, negated = rng.random() < 0.5, rng.random() < 0.4
    head = rng.choice(NEGATED) if negated else rng.choice(VERBS)
    if plural:
        head = head.replace("was", "were")
    parts = (head, rng.choice(INTENSIFIERS), rng.choice(words.positive if positive else words.negative))
    return " ".join(w for w in parts if w), positive != negated


def _noun(rng: random.Random, words: Lexicon) -> tuple[str, bool]:
    """'lacked wit' / 'was not without flaws': positive when a good thing is there or a bad one is not."""
    good, present = rng.random() < 0.5, rng.random() < 0.5
    verb = rng.choice(HAS if present else LACKS)
    return f"{verb} {rng.choice(words.good_nouns if good else words.bad_nouns)}", good == present


def _clause(rng: random.Random, words: Lexicon, aspects: list[str]) -> tuple[str, dict[str, bool]]:
    """A clause about one aspect, or two sharing one predicate, and each one's sentiment."""
    if len(aspects) == 2:
        if rng.random() < 0.5:
            predicate, positive = _adjective(rng, words, plural=True)
            return f"both the {aspects[0]} and the {aspects[1]} {predicate}", dict.fromkeys(aspects, positive)
        good = rng.random() < 0.5
        adjective = rng.choice(words.positive if good else words.negative)
        return f"neither the {aspects[0]} nor the {aspects[1]} was {adjective}", dict.fromkeys(aspects, not good)
    predicate, positive = _noun(rng, words) if rng.random() < 0.35 else _adjective(rng, words)
    return f"the {aspects[0]} {predicate}", {aspects[0]: positive}


def review(rng: random.Random, words: Lexicon = TRAINING) -> tuple[str, dict[str, bool]]:
    """A review of one or two aspects joined by connectors, and each aspect's sentiment."""
    count = rng.choices(list(ASPECT_COUNTS), weights=list(ASPECT_COUNTS.values()))[0]
    aspects = rng.sample(ASPECTS, count)
    text, sentiments, start = "", {}, 0
    while start < count:
        width = 2 if count - start >= 2 and rng.random() < 0.2 else 1
        clause, found = _clause(rng, words, aspects[start : start + width])
        text = f"{text} {rng.choice(CONNECTORS)} {clause}" if text else clause
        sentiments.update(found)
        start += width
    return text, sentiments


def generate(seed: int = 2019) -> dict[str, Split]:
    """Train and validation splits with no review in common, the same on every machine for a given seed.

    Each review is asked about up to two of its aspects, both in the same split; half the answers
    are positive. Validation reviews also use rarer sentiment words that training never shows.
    """
    rng = random.Random(seed)
    lexicons = {"train": TRAINING, "validation": VALIDATION}
    seen: set[str] = set()
    splits = {}
    for name, size in SIZES.items():
        rows: list[tuple[str, str, int]] = []
        room = [size // 2, size - size // 2]  # exactly balanced labels: a constant guess scores 0.5
        while len(rows) < size:
            text, sentiments = review(rng, lexicons[name])
            if text in seen:
                continue
            seen.add(text)
            for aspect in rng.sample(sorted(sentiments), len(sentiments)):
                label = int(sentiments[aspect])
                if room[label]:
                    rows.append((text, aspect, label))
                    room[label] -= 1
        rng.shuffle(rows)  # a review's two questions apart: --eval-limit's first rows are a fair sample
        text_a, text_b, labels = zip(*rows)
        splits[name] = Split(text_a, labels, text_b)
    return splits


@dataclass(frozen=True)
class SyntheticOptions(Options):
    """Options of ``synthetic``: any data seed makes a task."""

    data_seed: int = option(2019, help="seed of the generated reviews")
    train_steps: int = option(200, low=0, help="default fine-tuning budget in steps (--train-steps overrides)")


def load(request: TaskRequest) -> TaskData:
    options = SyntheticOptions.of(request.options)
    splits = generate(options.data_seed)
    names = ("negative", "positive")
    return TaskData(splits["train"], splits["validation"], names, "accuracy", max_length=MAX_LENGTH,
                    train_steps=options.train_steps)


@hookimpl
def harness_tasks() -> list[Task]:
    return [
        Task(
            name="synthetic",
            load=load,
            description="generated aspect-based sentiment pairs with negation and scope (no download; the default)",
            options=SyntheticOptions(),
        )
    ]
