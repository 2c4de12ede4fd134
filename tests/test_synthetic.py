"""The built-in ``synthetic`` task: deterministic aspect-sentiment pairs whose answer depends on the question."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
from harness_plugins import synthetic
from harness_plugins.synthetic import (
    BAD_NOUNS,
    GOOD_NOUNS,
    HAS,
    LACKS,
    NEGATED,
    NEGATIVE,
    POSITIVE,
    RARE_NEGATIVE,
    RARE_POSITIVE,
)

from harness import TaskRequest
from harness.records import Split

CLAUSE = re.compile(r"(neither the \w+ nor the \w+ was \w+|both the \w+ and the \w+ [\w ]+?|the \w+ [\w ]+?)"
                    r"(?= (?:and|but|while|although|whereas|yet) (?:the|neither|both) |$)")


@pytest.fixture(scope="module")
def splits() -> dict[str, Split]:
    return synthetic.generate()


def clauses(review: str) -> list[str]:
    """A review cut at its connectors (not at the 'and' of 'both the plot and the cast')."""
    found = [m.group(1) for m in CLAUSE.finditer(review)]
    assert sum(len(c.split()) for c in found) + len(found) - 1 == len(review.split()), review
    return found


def predicate_is_positive(predicate: str) -> bool:
    """The sentiment of 'was not really dull' / 'lacked wit', read independently of the generator."""
    *head, last = predicate.split()
    joined = " ".join(head)
    if last in GOOD_NOUNS or last in BAD_NOUNS:
        present = joined in HAS
        assert present or joined in LACKS, predicate
        return (last in GOOD_NOUNS) == present
    assert last in POSITIVE + RARE_POSITIVE + NEGATIVE + RARE_NEGATIVE, predicate
    negated = any(joined.replace("were", "was").startswith(n) for n in NEGATED)
    return (last in POSITIVE + RARE_POSITIVE) != negated


def clause_of(review: str, aspect: str) -> str:
    """The clause that judges ``aspect``."""
    found = [c for c in clauses(review) if aspect in c.split()]
    assert len(found) == 1, (review, aspect)
    return found[0]


def expected_label(review: str, aspect: str) -> int:
    """The asked aspect's sentiment: find its clause, then apply the scope rules."""
    for clause in [clause_of(review, aspect)]:
        shared = re.fullmatch(r"neither the (\w+) nor the (\w+) was (\w+)", clause)
        if shared and aspect in shared.group(1, 2):
            return int(shared.group(3) in NEGATIVE + RARE_NEGATIVE)
        pair = re.fullmatch(r"both the (\w+) and the (\w+) (.+)", clause)
        if pair and aspect in pair.group(1, 2):
            return int(predicate_is_positive(pair.group(3)))
        single = re.fullmatch(rf"the {aspect} (.+)", clause)
        if single and not pair:
            return int(predicate_is_positive(single.group(1)))
    raise AssertionError(f"{aspect!r} is not judged in {review!r}")


def test_sizes_pairs_and_the_task_record(splits: dict[str, Split]) -> None:
    assert {name: len(split) for name, split in splits.items()} == {"train": 4000, "validation": 800}
    data = synthetic.load(TaskRequest(None, 0, {}))
    assert data.train == splits["train"] and data.validation == splits["validation"]
    assert data.label_names == ("negative", "positive") and data.metric == "accuracy"
    assert data.train.text_b is not None and data.train.text_b[0] in synthetic.ASPECTS
    longest = max(len(a.split()) + 1 for a in data.train.text_a)
    assert longest + 3 <= data.max_length, "every pair fits whole (MiniLM needs one token a word here)"


def test_the_same_seed_gives_the_same_data_and_another_seed_other_data(splits: dict[str, Split]) -> None:
    assert synthetic.generate(2019) == splits
    other = synthetic.load(TaskRequest(None, 0, {"data_seed": 7}))
    assert other.train != splits["train"]
    assert len(set(other.train.text_a) & set(splits["train"].text_a)) < 100


def test_splits_share_no_review_and_labels_are_balanced(splits: dict[str, Split]) -> None:
    assert not set(splits["train"].text_a) & set(splits["validation"].text_a)
    for split in splits.values():
        assert sum(split.labels) == len(split) // 2
        assert len(set(zip(split.text_a, split.text_b))) == len(split)  # no duplicated question


def test_every_label_follows_the_scope_rules(splits: dict[str, Split]) -> None:
    for split in splits.values():
        labels = tuple(expected_label(a, b) for a, b in zip(split.text_a, split.text_b))
        assert labels == split.labels


def test_negation_double_negation_and_shared_predicates_all_occur(splits: dict[str, Split]) -> None:
    train = splits["train"]
    parts = [c for review in set(train.text_a) for c in clauses(review)]
    negated_positive = [c for c in parts if any(f" {n} " in c for n in NEGATED) and c.split()[-1] in POSITIVE]
    assert len(negated_positive) > 100
    assert sum(" was not without " in c for c in parts) > 50
    assert sum(c.startswith("neither ") for c in parts) > 50
    assert sum(c.startswith("both ") for c in parts) > 50


def test_the_answer_depends_on_the_question(splits: dict[str, Split]) -> None:
    """Many reviews are asked twice with different answers: a model blind to text_b cannot beat ~0.86."""
    for split in splits.values():
        answers: dict[str, set[int]] = defaultdict(set)
        for review, label in zip(split.text_a, split.labels):
            answers[review].add(label)
        both = sum(len(answers[review]) == 2 for review in split.text_a)
        assert both / len(split) > 0.25  # measured: 0.31 train, 0.29 validation


def test_bag_of_ngrams_cannot_solve_it(splits: dict[str, Split]) -> None:
    """Word order and binding matter: a linear model on word 1-3-grams of the pair stays far from solving it."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    def texts(split: Split) -> list[str]:
        return [f"{a} QUESTION_{b}" for a, b in zip(split.text_a, split.text_b)]

    vectorizer = CountVectorizer(ngram_range=(1, 3), token_pattern=r"\S+")
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(texts(splits["train"])), splits["train"].labels)
    accuracy = model.score(vectorizer.transform(texts(splits["validation"])), splits["validation"].labels)
    assert 0.5 < accuracy < 0.75


def test_validation_uses_rarer_sentiment_words_training_never_shows(splits: dict[str, Split]) -> None:
    """Generalising to them takes the pretrained model's knowledge, which pruning can destroy."""
    rare = set(RARE_POSITIVE + RARE_NEGATIVE)
    assert not rare & {w for review in splits["train"].text_a for w in review.split()}
    validation = splits["validation"]
    asked_rare = [label for a, b, label in zip(validation.text_a, validation.text_b, validation.labels)
                  if set(clause_of(a, b).split()) & rare]
    assert 0.15 < len(asked_rare) / len(validation) < 0.5
    assert 0.35 < sum(asked_rare) / len(asked_rare) < 0.65
