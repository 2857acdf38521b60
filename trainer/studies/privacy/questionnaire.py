"""The machine questionnaire, replacing the paper's human one (Table 4).

Group 2 (matching): a recognizer trained on original faces is shown one original face and
``choices`` protected faces, one of which is that same photo protected, the others protected
photos of other people; it picks the most cosine-similar. Chance: 1 / choices.

Group 1 (dissimilarity, 0-4, 4 = no similarity): derived from the same comparisons. AUC = the
probability that the true protected face scores above a distractor (ties count half);
dissimilarity = 4 min(1, 2 (1 - AUC)): a recognizer at chance (AUC 0.5) scores 4, one that
always prefers the true face scores 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.evaluate import wilson_interval


def draw_questions(labels: np.ndarray, choices: int, seed: int) -> np.ndarray:
    """(Q, choices) image indices per question: column 0 is the asked image itself, the
    others are images of other people (distinct people within a question)."""
    rng = np.random.default_rng(seed)
    questions = []
    for index, label in enumerate(labels):
        others = np.unique(labels[labels != label])
        if len(others) < choices - 1:
            raise ValueError(f"a {choices}-choice question needs {choices} distinct people")
        people = rng.choice(others, choices - 1, replace=False)
        distractors = [rng.choice(np.flatnonzero(labels == person)) for person in people]
        questions.append([index, *distractors])
    return np.array(questions, dtype=np.int64)


def answer(original: np.ndarray, protected: np.ndarray, questions: np.ndarray) -> dict[str, Any]:
    """``original`` and ``protected``: L2-normalized embeddings of the same images."""
    scores = np.einsum("qd,qcd->qc", original[questions[:, 0]], protected[questions])
    correct = int((scores.argmax(axis=1) == 0).sum())
    genuine, distractors = scores[:, :1], scores[:, 1:]
    auc = float(((genuine > distractors) + 0.5 * (genuine == distractors)).mean())
    return {
        "match_accuracy": correct / len(questions),
        "match_accuracy_ci95": list(wilson_interval(correct, len(questions))),
        "questions": len(questions),
        "chance": 1 / questions.shape[1],
        "auc": auc,
        "dissimilarity_0_4": 4 * min(1.0, 2 * (1 - auc)),
    }
