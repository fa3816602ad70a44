"""Heads trained on frozen embeddings: classifiers (linear probe, one-vs-rest BCE, boosted trees) and projections (triplet, ArcFace, SimCLR)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from core.prediction.validation import check_train_labels
from core.search.index import checked_vectors

# The embedding size a universal image embedding was limited to (Google's competition for one).
ARCFACE_MAX_DIM = 64
# Boosting fits one tree per class per round; beyond this many trees a CPU run takes minutes.
MAX_BOOSTED_TREES = 5000
# lbfgs iterations for the linear probe: enough to converge on unit-norm embeddings.
_PROBE_MAX_ITER = 500


@dataclass(frozen=True)
class HeadConfig:
    """How a head is trained: small by default so every head fits in seconds on 3k × 512 on a CPU."""

    epochs: int = 30  # passes over the training vectors (torch heads)
    min_steps: int = 300  # torch heads: at least this many Adam steps; small data gets more epochs
    lr: float = 0.01  # Adam learning rate (torch heads)
    batch_size: int = 128  # vectors per optimisation step (torch heads)
    dim: int = 64  # output dimensions of projection heads (ArcFace: at most 64)
    margin: float = 0.2  # triplet loss margin, in Euclidean distance between unit vectors
    scale: float = 30.0  # ArcFace logit scale s
    angular_margin: float = 0.2  # ArcFace additive angular margin m, in radians
    temperature: float = 0.1  # SimCLR NT-Xent temperature
    noise: float = 0.3  # SimCLR view: gaussian noise, as a share of the vector's norm
    dropout: float = 0.1  # SimCLR view: share of coordinates zeroed
    mix: float = 0.2  # SimCLR view: largest share of another vector mixed in
    probe_c: float = 10.0  # linear probe: inverse L2 regularisation (scikit-learn's C)
    # gradient-boosted trees: boosting iterations (capped by MAX_BOOSTED_TREES)
    boosting_rounds: int = 30
    boosting_features: int = 32  # gradient-boosted trees: PCA components fed to the trees (speed)
    seed: int = 0  # seeds weight initialisation, batch order and augmentation

    def __post_init__(self) -> None:
        minimum = {
            "epochs": 1,
            "min_steps": 0,
            "batch_size": 2,
            "dim": 2,
            "boosting_rounds": 1,
            "boosting_features": 1,
            "seed": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}={value!r}: use a whole number >= {low}")
        for name in ("lr", "margin", "scale", "temperature", "probe_c"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: use a number > 0")
        if not self.noise >= 0.0:
            raise ValueError(f"noise={self.noise!r}: use a share of the vector norm >= 0")
        for name in ("dropout", "mix"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: use a share in [0, 1)")
        if not 0.0 <= self.angular_margin < math.pi / 2:
            raise ValueError(f"angular_margin={self.angular_margin!r}: use radians in [0, π/2)")


@dataclass(frozen=True)
class ClassRanking:
    """A classifier's answer for each query: labels by probability, and a score for the "-1" threshold."""

    labels: list[list[str]]  # up to k distinct train labels per query, most probable first
    scores: np.ndarray  # (n,) highest class probability: low means unlike every train class


def _checked_labels(labels, n_rows: int) -> np.ndarray:
    if labels is None:
        raise ValueError("this head learns from labels: pass one train label per vector")
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (n_rows,):
        raise ValueError(f"{n_rows} vectors but {labels.size} labels; give one label per vector")
    check_train_labels(labels)
    labels = labels.astype(str)
    if len(set(labels.tolist())) < 2:
        raise ValueError("a head needs at least 2 classes to learn from")
    return labels


@contextmanager
def _one_thread():
    """Heads multiply small matrices: on a shared CPU, threads waiting on each other cost 10-20x the work."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


class Head:
    """Shared fitting bookkeeping: input checks, seconds spent, device and notes for people."""

    name = "head"
    kind = "projection"  # "projection" (transform) or "classifier" (rank)
    uses_labels = True
    device = "cpu"

    def __init__(self, config: HeadConfig = HeadConfig()):
        self.config = config
        self.fit_seconds: float | None = None
        self.notes: list[str] = []

    def fit(self, vectors: np.ndarray, labels=None) -> Head:
        """Train on (vectors, labels); self-supervised heads ignore the labels."""
        vectors = checked_vectors(vectors, "training vectors", min_rows=1)
        if vectors.shape[0] < 2:
            raise ValueError(f"a head needs at least 2 training vectors, got {vectors.shape[0]}")
        labels = _checked_labels(labels, vectors.shape[0]) if self.uses_labels else None
        self.notes = []
        with _one_thread():
            start = time.perf_counter()
            self._fit(vectors, labels)
            self.fit_seconds = time.perf_counter() - start
        self._input_dim = vectors.shape[1]
        return self

    def _fit(self, vectors: np.ndarray, labels: np.ndarray | None) -> None:
        raise NotImplementedError

    def _fitted_input(self, vectors: np.ndarray) -> np.ndarray:
        if self.fit_seconds is None:
            raise ValueError(f"the {self.name} is not fitted yet: call fit(vectors, labels) first")
        matrix = checked_vectors(vectors, "query vectors", min_rows=1)
        if matrix.shape[1] != self._input_dim:
            raise ValueError(
                f"vectors have {matrix.shape[1]} dimensions but the {self.name} was fitted on {self._input_dim}"
            )
        return matrix


# ---------------------------------------------------------------------------------------------
# Classifiers: probabilities over train classes; the best probability is the distractor score.


class ClassifierHead(Head):
    kind = "classifier"

    def rank(self, queries: np.ndarray, k: int = 5) -> ClassRanking:
        """Top-k labels by probability per query, and the highest probability as the distractor score."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with _one_thread():
            probabilities = self._probabilities(self._fitted_input(queries))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return ClassRanking(
            [self.classes[row].tolist() for row in order],
            probabilities.max(axis=1).astype(np.float64),
        )

    def _probabilities(self, queries: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LinearProbe(ClassifierHead):
    """Multinomial logistic regression on the frozen vectors."""

    name = "linear probe"
    device = "cpu (scikit-learn, 1 thread)"

    def _fit(self, vectors, labels):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        self._model = LogisticRegression(C=self.config.probe_c, max_iter=_PROBE_MAX_ITER)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self._model.fit(vectors, labels)
        for caught_warning in caught:
            if issubclass(caught_warning.category, ConvergenceWarning):
                self.notes.append(
                    f"logistic regression stopped at {_PROBE_MAX_ITER} iterations before converging"
                )
            else:
                warnings.warn(caught_warning.message, caught_warning.category, stacklevel=2)
        self.classes = self._model.classes_.astype(object)

    def _probabilities(self, queries):
        return self._model.predict_proba(queries)


class BoostedTrees(ClassifierHead):
    """scikit-learn's HistGradientBoosting on PCA-reduced vectors."""

    name = "gradient-boosted trees"
    device = "cpu (scikit-learn, 1 thread)"

    def _fit(self, vectors, labels):
        from sklearn.decomposition import PCA
        from sklearn.ensemble import HistGradientBoostingClassifier

        config = self.config
        components = min(config.boosting_features, *vectors.shape)
        if components < config.boosting_features:
            self.notes.append(
                f"PCA components lowered from {config.boosting_features} to {components} (data size)"
            )
        n_classes = len(set(labels.tolist()))
        rounds = max(1, min(config.boosting_rounds, MAX_BOOSTED_TREES // n_classes))
        if rounds < config.boosting_rounds:
            self.notes.append(
                f"boosting rounds lowered from {config.boosting_rounds} to {rounds}: one tree per class per "
                f"round, {n_classes} classes"
            )
        self._pca = PCA(n_components=components, random_state=config.seed).fit(vectors)
        # Few images per class: small leaves, no early stopping (a validation split would take whole classes).
        self._model = HistGradientBoostingClassifier(
            max_iter=rounds,
            learning_rate=0.3,
            min_samples_leaf=2,
            early_stopping=False,
            random_state=config.seed,
        )
        self._model.fit(self._pca.transform(vectors), labels)
        self.classes = self._model.classes_.astype(object)

    def _probabilities(self, queries):
        return self._model.predict_proba(self._pca.transform(queries))


# ---------------------------------------------------------------------------------------------
# torch heads: one seeded training loop; each head supplies its modules and its batch loss.


def _batches(
    n_rows: int, batch_size: int, rng: np.random.Generator, groups: list[np.ndarray] | None
) -> list[np.ndarray]:
    """Row batches for one epoch; with class groups, a class's rows stay together so batches hold positives."""
    if groups is None:
        order = rng.permutation(n_rows)
    else:
        order = np.concatenate([rng.permutation(groups[c]) for c in rng.permutation(len(groups))])
    chunks = [order[start : start + batch_size] for start in range(0, n_rows, batch_size)]
    # A batch of one row breaks BatchNorm and has no pairs: it joins the batch before it.
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-2:] = [np.concatenate(chunks[-2:])]
    return chunks


class TorchHead(Head):
    """A head trained with Adam on CPU under torch.manual_seed(config.seed)."""

    device = "cpu (torch, 1 thread)"
    group_batches = False  # keep each class's rows in one batch (pair-based losses need positives)

    def _fit(self, vectors, labels):
        import torch

        torch.manual_seed(self.config.seed)
        self._torch_generator = torch.Generator().manual_seed(self.config.seed)
        x = torch.from_numpy(vectors)
        codes = None
        groups = None
        if labels is not None:
            self.classes, code_array = np.unique(labels, return_inverse=True)
            codes = torch.from_numpy(code_array.astype(np.int64))
            if self.group_batches:
                groups = [np.flatnonzero(code_array == c) for c in range(len(self.classes))]
        modules = self._build(vectors.shape[1], 0 if labels is None else len(self.classes))
        optimiser = torch.optim.Adam(
            [p for m in modules for p in m.parameters()], lr=self.config.lr
        )
        rng = np.random.default_rng(self.config.seed)
        self.losses: list[float] = []
        for module in modules:
            module.train()
        for _ in range(self._epochs(len(vectors))):
            epoch_losses = []
            for batch in _batches(len(vectors), self.config.batch_size, rng, groups):
                index = torch.from_numpy(batch)
                loss = self._batch_loss(x[index], None if codes is None else codes[index])
                if loss is None:
                    continue
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                epoch_losses.append(loss.item())
            self.losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        for module in modules:
            module.eval()

    def _epochs(self, n_rows: int) -> int:
        # As _batches cuts them: a last batch of one row joins the one before.
        steps_per_epoch = math.ceil(n_rows / self.config.batch_size) - (
            n_rows > self.config.batch_size and n_rows % self.config.batch_size == 1
        )
        epochs = max(self.config.epochs, math.ceil(self.config.min_steps / steps_per_epoch))
        if epochs > self.config.epochs:
            self.notes.append(
                f"{epochs} epochs, not {self.config.epochs}: at least {self.config.min_steps} steps on {n_rows} vectors"
            )
        return epochs

    def _build(self, input_dim: int, n_classes: int) -> list:
        """The modules to train, with self._encoder set to the one that maps inputs onwards."""
        raise NotImplementedError

    def _batch_loss(self, x, codes):
        """The loss of one batch, or None when the batch holds nothing to learn from."""
        raise NotImplementedError


class ProjectionHead(TorchHead):
    """A torch head whose encoder maps vectors into a new space, searched by cosine kNN."""

    def _embed(self, x):
        import torch.nn.functional as F

        return F.normalize(self._encoder(x), dim=1)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """The vectors in the head's space: L2-normalised rows, ready for cosine kNN."""
        import torch

        matrix = self._fitted_input(vectors)
        with _one_thread(), torch.no_grad():
            return self._embed(torch.from_numpy(matrix)).numpy().astype(np.float32)


def _orthogonal_linear(input_dim: int, output_dim: int, bias: bool = False):
    """A random rotation-like projection: cosine structure survives it roughly (Johnson–Lindenstrauss)."""
    from torch import nn

    layer = nn.Linear(input_dim, output_dim, bias=bias)
    nn.init.orthogonal_(layer.weight)
    return layer


class OneVsRestBce(TorchHead, ClassifierHead):
    """One sigmoid per class trained with binary cross-entropy; the best sigmoid decides "-1"."""

    name = "one-vs-rest BCE"

    def _build(self, input_dim, n_classes):
        from torch import nn

        self._encoder = nn.Linear(input_dim, n_classes)
        # Zero weights grow only along directions a class's own images teach, so an unseen class
        # stays low on every sigmoid; random ones would give distractors chance highs. The bias
        # starts at the prior log-odds of one class among n.
        nn.init.zeros_(self._encoder.weight)
        nn.init.constant_(self._encoder.bias, -math.log(n_classes))
        return [self._encoder]

    def _batch_loss(self, x, codes):
        import torch.nn.functional as F

        logits = self._encoder(x)
        return F.binary_cross_entropy_with_logits(logits, F.one_hot(codes, logits.shape[1]).float())

    def _probabilities(self, queries):
        import torch

        with torch.no_grad():
            return (
                torch.sigmoid(self._encoder(torch.from_numpy(queries))).numpy().astype(np.float64)
            )


class TripletHead(ProjectionHead):
    """A linear projection trained with batch-hard triplet loss (metric learning)."""

    name = "triplet head"
    group_batches = True

    def _build(self, input_dim, n_classes):
        self._encoder = _orthogonal_linear(input_dim, self.config.dim)
        return [self._encoder]

    def _fit(self, vectors, labels):
        if np.unique(labels, return_counts=True)[1].max() < 2:
            raise ValueError(
                "the triplet head needs a class with 2+ training vectors to form positive pairs"
            )
        super()._fit(vectors, labels)

    def _batch_loss(self, x, codes):
        import torch

        embedded = self._embed(x)
        distances = torch.cdist(embedded, embedded)
        same = codes[:, None] == codes[None, :]
        positives = same & ~torch.eye(len(codes), dtype=torch.bool)
        anchors = positives.any(dim=1)
        if not anchors.any():
            return None
        hardest_positive = (distances * positives).max(dim=1).values
        hardest_negative = distances.masked_fill(same, float("inf")).min(dim=1).values
        losses = torch.relu(hardest_positive - hardest_negative + self.config.margin)
        return losses[anchors & torch.isfinite(hardest_negative)].mean()


class ArcFaceHead(ProjectionHead):
    """BatchNorm + Linear to at most 64 dimensions, trained with the ArcFace loss."""

    name = "ArcFace head"

    def __init__(self, config: HeadConfig = HeadConfig()):
        if config.dim > ARCFACE_MAX_DIM:
            raise ValueError(
                f"the ArcFace head projects to at most {ARCFACE_MAX_DIM} dimensions, got dim={config.dim}"
            )
        super().__init__(config)

    def _build(self, input_dim, n_classes):
        from torch import nn

        self._encoder = nn.Sequential(
            nn.BatchNorm1d(input_dim), nn.Linear(input_dim, self.config.dim)
        )
        self._centres = nn.Linear(self.config.dim, n_classes, bias=False)
        nn.init.xavier_uniform_(self._centres.weight)
        return [self._encoder, self._centres]

    def _batch_loss(self, x, codes):
        import torch
        import torch.nn.functional as F

        cosine = (self._embed(x) @ F.normalize(self._centres.weight, dim=1).T).clamp(
            -1 + 1e-6, 1 - 1e-6
        )
        margin = self.config.angular_margin
        angle = torch.acos(cosine)
        # Past π − m, cos(θ + m) would rise again; fall back to a linear penalty there.
        with_margin = torch.where(
            angle + margin < math.pi, torch.cos(angle + margin), cosine - margin * math.sin(margin)
        )
        target = F.one_hot(codes, cosine.shape[1]).bool()
        logits = self.config.scale * torch.where(target, with_margin, cosine)
        return F.cross_entropy(logits, codes)


class SimClrHead(ProjectionHead):
    """A projection trained self-supervised with NT-Xent on two augmented views of each embedding.

    Views are made in embedding space: mixing in a little of another vector, dropout, gaussian noise.
    """

    name = "SimCLR head"
    uses_labels = False

    def _build(self, input_dim, n_classes):
        from torch import nn

        dim = self.config.dim
        self._encoder = _orthogonal_linear(input_dim, dim)
        # The loss looks through a small projector, as in SimCLR; transform uses the encoder only.
        self._projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        return [self._encoder, self._projector]

    def augment(self, x):
        """One random view of each row: a mix with another row, dropout, then gaussian noise."""
        import torch

        config, generator = self.config, self._torch_generator
        partners = x[torch.randperm(len(x), generator=generator)]
        share = config.mix * torch.rand(len(x), 1, generator=generator)
        view = (1 - share) * x + share * partners
        keep = torch.rand(view.shape, generator=generator) >= config.dropout
        view = view * keep / (1 - config.dropout)
        noise = torch.randn(view.shape, generator=generator) * (
            config.noise / math.sqrt(x.shape[1])
        )
        return view + noise * x.norm(dim=1, keepdim=True)

    def _batch_loss(self, x, codes):
        import torch
        import torch.nn.functional as F

        z = F.normalize(
            self._projector(self._encoder(torch.cat([self.augment(x), self.augment(x)]))), dim=1
        )
        n = len(x)
        similarity = (z @ z.T / self.config.temperature).fill_diagonal_(float("-inf"))
        # Each view's positive is the other view of the same row.
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(similarity, targets)


HEADS: dict[str, Callable[[HeadConfig], Head]] = {
    "linear": LinearProbe,
    "bce": OneVsRestBce,
    "boosting": BoostedTrees,
    "triplet": TripletHead,
    "arcface": ArcFaceHead,
    "simclr": SimClrHead,
}


def make_head(key: str, config: HeadConfig = HeadConfig()) -> Head:
    """A fresh head by short name (see HEADS)."""
    if key not in HEADS:
        raise ValueError(f"unknown head {key!r}; use one of {', '.join(HEADS)}")
    return HEADS[key](config)
