"""The audit's findings from an analysis's searches: near-duplicate pairs, suspected mislabels, duplicate groups, look-alike classes, and findings.csv."""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from core.analysis.pipeline import LEAVE_ONE_OUT_STAGE, Analysis
from core.audit.cut import Cut, choose_cut
from core.io.files import replaced_atomically
from core.progress import Watch
from core.records import TEST, TRAIN
from core.search.index import Neighbours

NEAR_DUPLICATE, MISLABEL, DUPLICATE, SIMILAR_CLASSES = (
    "near_duplicate",
    "mislabel",
    "duplicate",
    "similar_classes",
)
KINDS = (NEAR_DUPLICATE, MISLABEL, DUPLICATE, SIMILAR_CLASSES)
KIND_NAMES = {
    NEAR_DUPLICATE: "train↔test near-duplicates",
    MISLABEL: "suspected mislabelled train images",
    DUPLICATE: "duplicates inside a split",
    SIMILAR_CLASSES: "train classes that look like one",
}
FINDINGS_COLUMNS = (
    "kind",
    "id",
    "other_id",
    "score",
    "suggested_label",
    "label",
    "other_label",
    "split",
    "group",
)
# The scopes a cut is chosen for, each from its own best similarities: an image meets more images of
# its class in a larger set, so its natural best similarity is higher there (test against test).
CUT_SCOPES = {
    NEAR_DUPLICATE: "test images' best similarities to train",
    TRAIN: "train images' best similarities to the rest of train",
    TEST: "test images' best similarities to the test images sharing a nearest train image",
}
# Neighbours each test image keeps among the other test images: a group of this many copies and the
# original shows whole, and larger groups still join through their members' links.
TEST_DEPTH = 4
# Test images are compared with the test images that share one of their this many nearest train images:
# the analysis's own search blocks the pairs, as an IVF index's lists would, at no search of its own.
# Copies of a test image at cosine 0.95 and above share at least one of their 3 nearest train images
# (all of 300 injected at 13k; 87% share the nearest alone), and a block costs its size squared.
SHARED_TRAIN_NEIGHBOURS = 3
# Rows of test vectors multiplied at once: blocks of one size are stacked up to this many rows.
_ROWS_PER_PRODUCT = 1 << 15
# A train image is suspected when none of this many nearest other train images shares its label: one
# look-alike of another class is common, two rarely are (digits with 5% of labels flipped, 30 a class:
# precision 0.42 with one, 0.82 with two, recall 1.0 with both).
MISLABEL_NEIGHBOURS = 2
# Same-class pairs sampled for the median similarity of two images of one class.
SAME_CLASS_PAIRS = 10_000
# Past this share of suspected train images the vectors, not the labels, are the likelier cause.
LOOSE_SHARE = 0.2
TEST_SEARCH_STAGE = "comparing test images that share a nearest train image"
FINDINGS_STAGE = "auditing: near-duplicates, mislabels, duplicate groups"


@dataclass(frozen=True)
class AuditConfig:
    """How the audit decides what is a near-duplicate."""

    cut: float | None = field(
        default=None,
        metadata={
            "help": "cosine similarity at or above which two images are near-duplicates, in (0, 1]; default: chosen "
            "from the data for each of test↔train, train and test: where the best similarities would reach by chance "
            "fewer than half an image, and never below 0.95"
        },
    )

    def __post_init__(self):
        if self.cut is not None and not 0.0 < self.cut <= 1.0:
            raise ValueError(f"cut is a cosine similarity in (0, 1], got {self.cut}")


@dataclass(frozen=True)
class Finding:
    """One finding: a pair of images, a train image, or a pair of classes, with its score."""

    kind: str  # one of KINDS
    id: str  # the test image of a near-duplicate, the train image of a mislabel, a class's image
    other_id: str  # the train image of a pair; "" for a mislabel
    # cosine similarity for pairs and classes, the margin for a mislabel (higher: surer)
    score: float
    suggested_label: str  # the label the finding suggests; "" when it suggests none
    label: str  # the label `id` carries ("" unknown)
    other_label: str  # the label `other_id` carries ("" for a mislabel)
    split: str  # the split of `id`
    # duplicates: the group (connected images at or above the cut), 1 the largest
    group: int | None = None

    def row(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "id": self.id,
            "other_id": self.other_id,
            "score": f"{self.score:.6f}",
            "suggested_label": self.suggested_label,
            "label": self.label,
            "other_label": self.other_label,
            "split": self.split,
            "group": "" if self.group is None else str(self.group),
        }


def _text(label) -> str:
    return "" if label is None else str(label)


@dataclass
class Audit:
    """An analysis's data audited: what is fixed, and the pairs and groups found at any cut."""

    analysis: Analysis
    # each test image's top neighbours among the test images sharing a nearest train image
    test_neighbours: Neighbours
    # the default cut of each scope (CUT_SCOPES): the config's, or chosen from the data
    cuts: dict[str, Cut]
    notes: list[str] = field(default_factory=list)

    @property
    def train_neighbours(self) -> Neighbours:
        return self.analysis.train_neighbours

    @cached_property
    def _train_rows(self) -> dict[str, int]:
        return {image_id: row for row, image_id in enumerate(self.analysis.train.ids.tolist())}

    def nearest_train_image(self, train_id: str) -> str | None:
        """The other train image nearest to `train_id` (for a suspected mislabel, one of its suggested class); None without one."""
        neighbours = self.train_neighbours
        if neighbours.k == 0:
            return None
        return str(self.analysis.train.ids[neighbours.indices[self._train_rows[train_id], 0]])

    @cached_property
    def train_labels(self) -> np.ndarray:
        return self.analysis.train.labels.astype(object)

    @cached_property
    def mislabels(self) -> list[Finding]:
        """Train images none of whose MISLABEL_NEIGHBOURS nearest other train images shares their label, surest first.

        Their own class ranks below the classes of those neighbours (leave-one-out class ranks).
        A class with one train image has no other image to be near, and is not judged. The score is
        how much nearer the suggested class (the nearest image's) is than the own class; an own
        class below the searched neighbours counts at the last of them, a lower bound then.
        """
        neighbours, labels = self.train_neighbours, self.train_labels
        if neighbours.k == 0:
            return []
        sizes = Counter(labels.tolist())
        near = labels[neighbours.indices]
        own = near == labels[:, None]
        rows = np.arange(len(labels))
        own_best = np.where(
            own.any(axis=1),
            neighbours.similarities[rows, np.argmax(own, axis=1)],
            neighbours.similarities[:, -1],
        )
        judged = np.array([sizes[label] >= 2 for label in labels.tolist()])
        suspect = judged & ~own[:, :MISLABEL_NEIGHBOURS].any(axis=1)
        ids = self.analysis.train.ids
        findings = [
            Finding(
                MISLABEL,
                str(ids[row]),
                "",
                float(neighbours.similarities[row, 0] - own_best[row]),
                _text(near[row, 0]),
                _text(labels[row]),
                "",
                TRAIN,
            )
            for row in np.flatnonzero(suspect)
        ]
        return sorted(findings, key=lambda finding: -finding.score)

    @cached_property
    def same_class_similarity(self) -> float | None:
        """The median similarity of two train images of one class (of up to SAME_CLASS_PAIRS seeded pairs); None without a class of 2+."""
        labels = self.train_labels
        classes, codes, sizes = np.unique(
            labels.astype(str), return_inverse=True, return_counts=True
        )
        rows = np.flatnonzero(sizes[codes] >= 2)
        if len(rows) == 0:
            return None
        rng = np.random.default_rng(self.analysis.config.seed)
        order = np.argsort(codes, kind="stable")
        starts = np.searchsorted(codes[order], np.arange(len(classes)))
        where = np.empty(len(codes), np.int64)
        where[order] = np.arange(len(codes))
        first = rng.choice(rows, SAME_CLASS_PAIRS)
        size = sizes[codes[first]]
        offset = where[first] - starts[codes[first]]
        second = order[starts[codes[first]] + (offset + rng.integers(1, size)) % size]
        vectors = self.analysis.train.vectors
        return float(np.median(np.einsum("ij,ij->i", vectors[first], vectors[second])))

    @cached_property
    def similar_classes(self) -> list[Finding]:
        """Pairs of train classes whose images are nearer each other than most images of one class are.

        For classes A and B: each image of A's best similarity to B (and of B's to A) among its
        searched neighbours, an image without the other class among them counting as below all; a
        pair is found when the median over both classes' images is above the median similarity of
        two train images of one class. The score is that median; id and other_id are the pair's
        nearest images.
        """
        neighbours, labels = self.train_neighbours, self.train_labels
        same_class = self.same_class_similarity
        if neighbours.k == 0 or same_class is None:
            return []
        near = labels[neighbours.indices]
        best: dict[tuple[str, str], dict[int, tuple[float, int]]] = {}
        above = (near != labels[:, None]) & (neighbours.similarities > same_class)
        for row, column in zip(*np.nonzero(above)):
            a, b = str(labels[row]), str(near[row, column])
            pair = (a, b) if a < b else (b, a)
            seen = best.setdefault(pair, {})
            if row not in seen:  # columns run best first
                seen[row] = (
                    float(neighbours.similarities[row, column]),
                    int(neighbours.indices[row, column]),
                )
        sizes = Counter(str(label) for label in labels.tolist())
        findings = []
        ids = self.analysis.train.ids
        for (a, b), seen in best.items():
            members = sizes[a] + sizes[b]
            values = sorted((value for value, _ in seen.values()), reverse=True)
            # the median of all members, those without a value counting below every value
            middle = (members - 1) / 2
            lower, upper = int(np.floor(middle)), int(np.ceil(middle))
            if upper >= len(values):
                continue
            median = (values[lower] + values[upper]) / 2
            if median <= same_class:
                continue
            row = max(seen, key=lambda r: seen[r][0])
            other = seen[row][1]
            findings.append(
                Finding(
                    SIMILAR_CLASSES,
                    str(ids[row]),
                    str(ids[other]),
                    float(median),
                    "",
                    _text(labels[row]),
                    _text(labels[other]),
                    TRAIN,
                )
            )
        return sorted(findings, key=lambda finding: -finding.score)

    def near_duplicates(self, cut: float | None = None) -> list[Finding]:
        """Test images whose best train neighbour is at or above the cut: the label it would give them, and the test truth."""
        cut = self.cuts[NEAR_DUPLICATE].value if cut is None else cut
        analysis = self.analysis
        similarities = analysis.neighbours.similarities[:, 0]
        train_rows = analysis.neighbours.indices[:, 0]
        findings = [
            Finding(
                NEAR_DUPLICATE,
                str(analysis.test.ids[row]),
                str(analysis.train.ids[train_rows[row]]),
                float(similarities[row]),
                _text(self.train_labels[train_rows[row]]),
                _text(analysis.test.labels[row]),
                _text(self.train_labels[train_rows[row]]),
                TEST,
            )
            for row in np.flatnonzero(similarities >= cut)
        ]
        return sorted(findings, key=lambda finding: -finding.score)

    def duplicates(self, split: str, cut: float | None = None) -> list[Finding]:
        """Pairs of images of one split at or above the cut, each with its group (connected pairs), largest group first."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        cut = self.cuts[split].value if cut is None else cut
        embeddings = self.analysis.train if split == TRAIN else self.analysis.test
        neighbours = self.train_neighbours if split == TRAIN else self.test_neighbours
        rows, columns = np.nonzero(neighbours.similarities >= cut)
        others = neighbours.indices[rows, columns]
        first, second = np.minimum(rows, others), np.maximum(rows, others)
        pairs, where = np.unique(np.column_stack([first, second]), axis=0, return_index=True)
        if len(pairs) == 0:
            return []
        scores = neighbours.similarities[rows, columns][where]
        n = len(embeddings.ids)
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        # groups numbered by size, largest first; ties by their first image
        sizes = Counter(component[np.unique(pairs)].tolist())
        order = sorted(sizes, key=lambda group: (-sizes[group], group))
        number = {group: rank + 1 for rank, group in enumerate(order)}
        labels = embeddings.labels
        findings = [
            Finding(
                DUPLICATE,
                str(embeddings.ids[a]),
                str(embeddings.ids[b]),
                float(score),
                "",
                _text(labels[a]),
                _text(labels[b]),
                split,
                number[component[a]],
            )
            for (a, b), score in zip(pairs.tolist(), scores.tolist())
        ]
        return sorted(findings, key=lambda finding: (finding.group, -finding.score))

    def findings(self, cut: float | None = None) -> list[Finding]:
        """Every finding at the cut (by default each scope's own): each kind in KINDS order, surest first."""
        return [
            *self.near_duplicates(cut),
            *self.mislabels,
            *self.duplicates(TRAIN, cut),
            *self.duplicates(TEST, cut),
            *self.similar_classes,
        ]

    def counts(self, cut: float | None = None) -> dict[str, int]:
        """Findings of each kind at the cut."""
        found = Counter(finding.kind for finding in self.findings(cut))
        return {kind: found.get(kind, 0) for kind in KINDS}


def test_neighbours_through_train(
    vectors: np.ndarray, train_neighbours: Neighbours, depth: int, watch: Watch = Watch()
) -> Neighbours:
    """Each test image's top `depth` neighbours among the test images sharing one of its SHARED_TRAIN_NEIGHBOURS
    nearest train images (`train_neighbours`, the analysis's search); missing places hold -1 at similarity -inf."""
    n = len(vectors)
    shared = min(SHARED_TRAIN_NEIGHBOURS, train_neighbours.k)
    keys = train_neighbours.indices[:, :shared].ravel()
    owners = np.repeat(np.arange(n), shared)
    order = np.argsort(keys, kind="stable")
    keys, owners = keys[order], owners[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    found_rows, found_others, found_similarities = [], [], []
    block_sizes = np.unique(sizes[sizes >= 2])
    for done, size in enumerate(block_sizes):
        watch.step(done, len(block_sizes), TEST_SEARCH_STAGE)
        of_size = starts[sizes == size]
        per_product = max(1, _ROWS_PER_PRODUCT // int(size))
        for first in range(0, len(of_size), per_product):
            members = owners[of_size[first : first + per_product, None] + np.arange(size)]
            block = vectors[members]
            similarities = block @ block.transpose(0, 2, 1)
            similarities[:, np.arange(size), np.arange(size)] = -np.inf
            found_rows.append(np.repeat(members, size, axis=1).ravel())
            found_others.append(np.tile(members, (1, size)).ravel())
            found_similarities.append(similarities.ravel())
    indices = np.full((n, depth), -1, np.int64)
    similarities = np.full((n, depth), -np.inf, np.float32)
    if found_rows:
        rows, others = np.concatenate(found_rows), np.concatenate(found_others)
        values = np.concatenate(found_similarities)
        keep = rows != others
        rows, others, values = rows[keep], others[keep], values[keep]
        # each pair once (two images may share several train neighbours), best first per row
        order = np.lexsort((others, -values, rows))
        rows, others, values = rows[order], others[order], values[order]
        first = np.r_[True, (rows[1:] != rows[:-1]) | (others[1:] != others[:-1])]
        rows, others, values = rows[first], others[first], values[first]
        place = np.arange(len(rows)) - np.searchsorted(rows, rows)
        kept = place < depth
        indices[rows[kept], place[kept]] = others[kept]
        similarities[rows[kept], place[kept]] = values[kept]
    return Neighbours(similarities, indices)


def audit(analysis: Analysis, config: AuditConfig = AuditConfig(), watch: Watch = Watch()) -> Audit:
    """Audit the data behind an analysis, reusing its searches: test against train, train against itself.

    Test is not searched against itself: test images are compared with those sharing a nearest train
    image (test_neighbours_through_train); `watch` hears how it goes and can stop it (Cancelled).
    """
    test = analysis.test
    watch.step(0, 1, LEAVE_ONE_OUT_STAGE)
    _ = analysis.train_neighbours  # searched by the analysis, or here on its behalf (kept there)
    test_neighbours = test_neighbours_through_train(
        test.vectors, analysis.neighbours, TEST_DEPTH, watch
    )
    watch.step(0, 1, FINDINGS_STAGE)
    cuts = {
        NEAR_DUPLICATE: choose_cut(
            analysis.neighbours.similarities[:, 0], CUT_SCOPES[NEAR_DUPLICATE], config.cut
        ),
        TRAIN: choose_cut(
            analysis.train_neighbours.similarities[:, :1], CUT_SCOPES[TRAIN], config.cut
        ),
        TEST: choose_cut(test_neighbours.similarities[:, :1], CUT_SCOPES[TEST], config.cut),
    }
    notes = []
    singletons = sum(1 for size in Counter(analysis.train.labels.tolist()).values() if size == 1)
    if singletons:
        notes.append(
            f"{singletons} train classes have one image: with no other image of their class to be near, "
            "their labels are not judged"
        )
    result = Audit(analysis, test_neighbours, cuts, notes)
    suspected = len(result.mislabels) / len(analysis.train.ids)
    if suspected > LOOSE_SHARE:
        notes.append(
            f"{suspected:.0%} of train images have none of their class among their {MISLABEL_NEIGHBOURS} nearest: the "
            "vectors separate classes poorly, and most suspects are likely labelled right"
        )
    _ = result.similar_classes
    return result


# What each item's findings add to an export, column by column (core.exports): the train image a test
# image copies, the label suggested for a suspected train image, and the duplicate group inside its split.
EXPORT_COLUMNS = ("near_duplicate_of", "suggested_label", "duplicate_group")


def export_columns(found: Audit, ids, cut: float | None = None) -> dict[str, list]:
    """EXPORT_COLUMNS for the items `ids` (train ids before test ids, as exports hold them), None where none applies."""
    columns: dict[str, dict[str, object]] = {name: {} for name in EXPORT_COLUMNS}
    for finding in found.findings(cut):
        if finding.kind == NEAR_DUPLICATE:
            columns["near_duplicate_of"][finding.id] = finding.other_id
        elif finding.kind == MISLABEL:
            columns["suggested_label"][finding.id] = finding.suggested_label
        elif finding.kind == DUPLICATE:
            for image_id in (finding.id, finding.other_id):
                columns["duplicate_group"][(finding.split, image_id)] = finding.group
    n_train = len(found.analysis.train.ids)
    rows = [(TRAIN if row < n_train else TEST, str(i)) for row, i in enumerate(ids)]
    return {
        "near_duplicate_of": [
            columns["near_duplicate_of"].get(i) if split == TEST else None for split, i in rows
        ],
        "suggested_label": [
            columns["suggested_label"].get(i) if split == TRAIN else None for split, i in rows
        ],
        "duplicate_group": [columns["duplicate_group"].get(row) for row in rows],
    }


def csv_text(header: tuple[str, ...], rows) -> str:
    """A CSV as text, written by the csv module: any id or label, commas, quotes and line breaks included, reads back."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def findings_csv(findings: list[Finding]) -> str:
    """findings.csv as text: FINDINGS_COLUMNS, one row per finding."""
    return csv_text(FINDINGS_COLUMNS, (finding.row().values() for finding in findings))


def write_findings(path: Path | str, findings: list[Finding]) -> Path:
    """Write findings.csv to `path`; a failed write keeps the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as partial:
        partial.write_text(findings_csv(findings), encoding="utf-8", newline="")
    return path
