"""Several models' embeddings as one (norm scaling, weighted sum or concatenation) and the one-at-a-time weight search."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from core.prediction.config import PredictConfig
from core.prediction.validation import validate_threshold
from core.records import TRAIN, Embeddings
from core.search.index import unit_rows

MODES = ("auto", "sum", "concat")

Metric = Callable[[Embeddings], float]


def _row_order(reference: Embeddings, member: Embeddings) -> np.ndarray:
    """Rows of `member` in the order of `reference`, matched by (split, id); mismatched sets are refused."""
    position = {
        key: row for row, key in enumerate(zip(member.splits.tolist(), member.ids.tolist()))
    }
    if len(position) != len(member.ids):
        raise ValueError(f"{member.model} repeats a (split, id) pair; each item must appear once")
    wanted = list(zip(reference.splits.tolist(), reference.ids.tolist()))
    missing = [key for key in wanted if key not in position]
    extra = len(position) - (len(wanted) - len(missing))
    if missing or extra:
        example = f", e.g. {missing[0][1]!r} ({missing[0][0]})" if missing else ""
        raise ValueError(
            f"{member.model} and {reference.model} embed different items: {len(missing)} of {reference.model}'s "
            f"items are missing from {member.model}{example}, and {extra} are extra; embed the same dataset with each model"
        )
    order = np.array([position[key] for key in wanted], dtype=np.int64)
    conflicts = [
        i
        for i, (mine, theirs) in enumerate(zip(reference.labels, member.labels[order]))
        if mine is not None and theirs is not None and mine != theirs
    ]
    if conflicts:
        i = conflicts[0]
        raise ValueError(
            f"{reference.model} and {member.model} disagree on the label of {str(reference.ids[i])!r}: "
            f"{reference.labels[i]!r} vs {member.labels[order][i]!r}"
        )
    return order


def _resolve_mode(members: Sequence[Embeddings], mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    same_dim = len({member.dim for member in members}) == 1
    if mode == "sum" and not same_dim:
        dims = ", ".join(f"{m.model}: {m.dim}" for m in members)
        raise ValueError(
            f"a weighted sum needs equal dimensions ({dims}); use mode='concat' or 'auto'"
        )
    if mode == "auto":
        return "sum" if same_dim else "concat"
    return mode


def combine(
    members: Sequence[Embeddings], weights: Sequence[float], mode: str = "auto"
) -> Embeddings:
    """One table from several models' embeddings of the same items.

    Each model's rows are scaled to unit norm first, so no model dominates by the size of its
    vectors (so that no model outweighs another by the scale of its vectors). Then a weighted sum when all dimensions match ("auto"
    or "sum"), else the weight-scaled blocks side by side ("concat"); rows are re-normalised.
    Concatenation scores a pair by the weighted sum of each model's cosine, so it suits models
    whose spaces are unrelated even at equal dimensions.
    """
    if len(members) == 0:
        raise ValueError("combine needs at least one model's embeddings")
    if len(weights) != len(members):
        raise ValueError(
            f"{len(members)} models but {len(weights)} weights; give one weight per model"
        )
    weights = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not np.any(weights > 0):
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
    mode = _resolve_mode(members, mode)
    reference = members[0]
    orders = [_row_order(reference, m) for m in members]
    # A model weighted 0 is left out of the vectors but still checked and named.
    blocks = [
        unit_rows(m.vectors[order], f"{m.model} vectors") * w
        for m, w, order in zip(members, weights, orders)
        if w > 0
    ]
    combined = np.sum(blocks, axis=0) if mode == "sum" else np.concatenate(blocks, axis=1)
    norms = np.linalg.norm(combined, axis=1, keepdims=True)
    if np.any(norms < 1e-12):
        row = int(np.flatnonzero(norms[:, 0] < 1e-12)[0])
        raise ValueError(
            f"the weighted sum cancels out for {reference.ids[row]!r}; use mode='concat'"
        )
    identity = " + ".join(f"{m.model}×{w:.3g}" for m, w in zip(members, weights))
    return Embeddings(
        reference.ids,
        reference.splits,
        reference.labels,
        (combined / norms).astype(np.float32),
        f"ensemble({identity})",
    )


def validation_map(config: PredictConfig = PredictConfig()) -> Metric:
    """The default search metric: MAP@k on train with held-out classes as pseudo-distractors.

    The held-out draw is seeded, so every weight is judged on the same splits. Needs at least
    4 train classes and a class with 2+ images (validate_threshold says so otherwise).
    """
    return lambda embeddings: validate_threshold(embeddings.subset(TRAIN), config).map_at_k


@dataclass(frozen=True)
class WeightStep:
    """One evaluation of the search."""

    model: str  # the model whose weight was being tried
    ratio: float  # its weight relative to the first (best solo) model
    weights: tuple[
        float, ...
    ]  # all weights at this step, in the order the models were given (0 = not yet added)
    metric: float  # the validation metric of the combination


# eq=False: the embeddings hold arrays, whose == is element-wise rather than a truth value.
@dataclass(frozen=True, eq=False)
class WeightSearch:
    """Weights found one model at a time, every evaluation, and the best combination."""

    weights: tuple[float, ...]  # one per model, in the order given; the best solo model has 1.0
    metric: float  # validation metric at these weights
    mode: str  # "sum" or "concat"
    steps: list[WeightStep]  # every evaluation, in order
    embeddings: Embeddings  # combine(models, weights, mode)

    def table(self) -> str:
        """Every evaluation as aligned text: the model tried, its ratio, all weights and the metric."""
        width = max(len("model tried"), *(len(step.model) for step in self.steps))
        lines = [f"{'step':>4}  {'model tried':<{width}}  ratio  {'metric':>6}  weights"]
        for number, step in enumerate(self.steps, start=1):
            weights = ", ".join(f"{w:.3g}" for w in step.weights)
            lines.append(
                f"{number:>4}  {step.model:<{width}}  {step.ratio:5.3f}  {step.metric:.4f}  ({weights})"
            )
        chosen = ", ".join(f"{w:.3g}" for w in self.weights)
        lines.append(f"chosen ({self.mode}): weights ({chosen}), metric {self.metric:.4f}")
        return "\n".join(lines)


def search_weights(
    members: Sequence[Embeddings],
    metric: Metric | None = None,
    max_ratio: float = 2.0,
    iterations: int = 8,
    mode: str = "auto",
    progress: Callable[[WeightStep], None] | None = None,
) -> WeightSearch:
    """Weights for an ensemble, one model at a time.

    Every model is scored alone; the best gets weight 1.0 and the others join in descending order
    of their solo score. Each newcomer's ratio is found by ternary search on [0, max_ratio] with the
    earlier weights fixed, assuming the metric rises then falls; the ends are tried too, so a model
    that only hurts gets 0. Higher metric is better; the default is `validation_map()`.
    `progress` receives each step as it is evaluated.
    """
    if len(members) < 2:
        raise ValueError(f"a weight search needs at least 2 models, got {len(members)}")
    if not max_ratio > 0:
        raise ValueError(f"max_ratio must be > 0, got {max_ratio}")
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be a whole number >= 1, got {iterations!r}")
    metric = metric or validation_map()
    mode = _resolve_mode(members, mode)
    steps: list[WeightStep] = []

    def evaluate(weights: np.ndarray, model: str, ratio: float) -> float:
        value = float(metric(combine(members, weights, mode)))
        steps.append(WeightStep(model, float(ratio), tuple(weights.tolist()), value))
        if progress is not None:
            progress(steps[-1])
        return value

    solo = []
    for i, member in enumerate(members):
        weights = np.zeros(len(members))
        weights[i] = 1.0
        solo.append(evaluate(weights, member.model, 1.0))
    order = sorted(range(len(members)), key=lambda i: -solo[i])
    weights = np.zeros(len(members))
    weights[order[0]] = 1.0
    best = solo[order[0]]

    def with_newcomer(newcomer: int, ratio: float) -> float:
        """The metric with the newcomer at `ratio` beside the weights chosen so far."""
        return evaluate(
            np.where(np.arange(len(members)) == newcomer, ratio, weights),
            members[newcomer].model,
            ratio,
        )

    for newcomer in order[1:]:
        ratio, best = _ternary_search(
            partial(with_newcomer, newcomer),
            max_ratio,
            iterations,
            floor=best,
        )
        weights[newcomer] = ratio
    return WeightSearch(tuple(weights.tolist()), best, mode, steps, combine(members, weights, mode))


def _ternary_search(
    score: Callable[[float], float], high: float, iterations: int, floor: float
) -> tuple[float, float]:
    """The best ratio tried on [0, high] and its score; ties go to the smaller ratio.

    Ratio 0 leaves the newcomer out, which scores `floor` (the ensemble so far) without evaluating it.
    """
    tried = {0.0: floor, high: score(high)}
    low = 0.0
    for _ in range(iterations):
        third = (high - low) / 3
        left, right = low + third, high - third
        tried[left], tried[right] = score(left), score(right)
        if tried[left] < tried[right]:
            low = left
        else:
            high = right
    best = max(sorted(tried), key=lambda r: tried[r])
    return best, tried[best]
