"""A self-contained HTML report: one file that opens offline, with the analysis's numbers, curves, map and neighbours."""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import plotly.io as pio
from PIL import Image

from core.analysis.loading import LoadedEmbeddings
from core.analysis.pipeline import Analysis
from core.audit.findings import CUT_SCOPES, KIND_NAMES, KINDS, Audit
from core.display import DISPLAY_LIMIT, inert_html
from core.exports.items import thumbnails
from core.io.files import replaced_atomically
from core.maps.figures import (
    analysis_map_points,
    contamination_curve,
    metric_curve,
    scatter_map,
    score_histogram,
)
from core.maps.projection import METHOD_NAMES, Projection
from core.prediction.validation import INTERVAL_LEFT_OUT
from core.progress import Watch
from core.records import DISTRACTOR, TEST, TRAIN
from core.report.config import ReportConfig

# The map draws at most this many points, a seeded random sample above it: with ids and labels elided
# to core.display.DISPLAY_LIMIT characters each, a point costs at most about 450 bytes of JSON.
MAP_POINT_LIMIT = 5_000
NEIGHBOURS_SHOWN = 5  # train neighbours on each card, whatever k is
THUMBNAIL_EDGE = 96  # pixels on the longer side of every image in the report
# JPEG quality: a 96-px square of pure noise, the worst case, is 9 KB as a data URI
THUMBNAIL_QUALITY = 80
CLASSES_LISTED = 20  # rows of the class table; the others are counted in one line
AUDIT_FINDINGS_SHOWN = 5  # findings of each kind listed in the audit section, surest first
# How far the threshold moves to show "flips" without test truth: this many points more of test flagged.
FLIP_SHARE_STEP = 0.05
# The bound tests hold every report to: plotly.js (4.8 MB, inlined once), the map at MAP_POINT_LIMIT
# points (at most 2.3 MB), core.report.config.MAX_CARDS_PER_KIND × 4 kinds × (1 + NEIGHBOURS_SHOWN) thumbnails
# (at most 1.8 MB at 9 KB) and the text around them, whose titles (FULL_TEXT_LIMIT) add 0.5 MB when
# every id and label is over 1,000 characters (9.1 MB in all, the test's worst case).
MAX_REPORT_BYTES = 10_000_000
# plotly.js (4.x) shows a "Share chart..." button unless told not to (showSendToCloud defaults to true): one
# dialog and it uploads the figure, ids and labels included, to Plotly Cloud. Without it and the logo
# (a link to plotly.com) the modebar keeps only what works offline: download as PNG, zoom, pan, select.
FIGURE_CONFIG = {"displaylogo": False, "showSendToCloud": False, "responsive": True}
# Characters of a user string a pointer shows on hover (its title) where the page shows it elided to
# core.display.DISPLAY_LIMIT: any realistic label whole, and a bound on what a hostile one adds to the file.
FULL_TEXT_LIMIT = 1_000
MAP_HEIGHT = 650
MAP_COLOURING = "flag"
SAMPLE_SEED = 0  # the map's sample and the cards' draws: the same analysis gives the same report


@dataclass(frozen=True)
class CardGroup:
    """Test items of one kind shown with their neighbours: a title, why they were chosen, and their rows in test."""

    title: str
    why: str
    rows: np.ndarray


def jpeg_uri(image: Image.Image) -> str:
    """The image as a JPEG data URI, which a page shows without asking for a file."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card_groups(
    analysis: Analysis,
    flags: np.ndarray,
    predictions: list[list[str]],
    threshold: float,
    per_kind: int,
) -> list[CardGroup]:
    """Test items that show what the verdict does: right and wrong first labels among kept items, flagged
    items, and the flips between this threshold and another (with truth, the best one).

    Kinds may share items (a flip is also kept or flagged); each draw is seeded, flips are the nearest to
    the threshold, as the first to change verdict when it moves.
    """
    rng = np.random.default_rng(SAMPLE_SEED)
    kept = ~flags
    groups = []
    if analysis.truth is None:
        groups.append(
            CardGroup(
                "Kept",
                "a random draw of the test items kept as known classes",
                _drawn(np.flatnonzero(kept), per_kind, rng),
            )
        )
    else:
        first = np.array([row[0] if row else None for row in predictions], dtype=object)
        right = first == analysis.truth
        groups.append(
            CardGroup(
                "Hits",
                "kept items whose first label is the true one (a random draw)",
                _drawn(np.flatnonzero(kept & right), per_kind, rng),
            )
        )
        groups.append(
            CardGroup(
                "Misses",
                "kept items whose first label is wrong, distractors among them (a random draw)",
                _drawn(np.flatnonzero(kept & ~right), per_kind, rng),
            )
        )
    groups.append(
        CardGroup(
            "Flagged",
            f'items flagged as distractors, "{DISTRACTOR}" first (a random draw)',
            _drawn(np.flatnonzero(flags), per_kind, rng),
        )
    )
    other, other_name = _flip_threshold(analysis, threshold)
    between = (analysis.scores >= min(threshold, other)) & (analysis.scores < max(threshold, other))
    flipped = np.flatnonzero(between)
    nearest = flipped[np.argsort(np.abs(analysis.scores[flipped] - threshold), kind="stable")][
        :per_kind
    ]
    why = (
        f"{len(flipped)} items change verdict between the threshold used ({threshold:.3f}) and {other_name} ({other:.3f}); "
        "these are the nearest to the threshold used"
    )
    groups.append(CardGroup("Flips", why, nearest))
    return groups


def _drawn(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, min(n, len(rows)), replace=False)) if len(rows) else rows


def _flip_threshold(analysis: Analysis, threshold: float) -> tuple[float, str]:
    """The threshold the flips are counted against, and its name for people."""
    sweep = analysis.sweep
    if sweep.has_map:
        return sweep.best_map_threshold()[0], f"the best with test truth (MAP@{analysis.config.k})"
    share = min(1.0, float(sweep.contamination(threshold)) + FLIP_SHARE_STEP)
    return sweep.threshold_for(share), f"the one flagging {FLIP_SHARE_STEP:.0%} more of test"


def report_html(
    loaded: LoadedEmbeddings,
    analysis: Analysis,
    projection: Projection,
    *,
    name: str,
    images: Mapping[str, Path] | None = None,
    threshold: float | None = None,
    threshold_rule: str | None = None,
    flags: np.ndarray | None = None,
    config: ReportConfig = ReportConfig(),
    watch: Watch = Watch(),
    audit: Audit | None = None,
) -> str:
    """The report of `analysis` (of `loaded`) as one HTML page that needs no network: plotly.js, figures and thumbnails inside.

    `projection` lays out `loaded.embeddings` (train and test subsets, as core.maps.figures.map_points
    wants). `images` maps item ids to image files; items without one show their id, label and score.
    `threshold` defaults to the analysis's, `threshold_rule` says how it was chosen, and `flags` (e.g.
    DBSCAN's) replaces the threshold's verdict. `watch` hears the slow steps. `audit` (of this
    analysis) adds its counts and a few of each kind of finding.
    """
    images = images or {}
    threshold = analysis.threshold if threshold is None else float(threshold)
    threshold_rule = threshold_rule or analysis.threshold_source
    flags = analysis.flags(threshold) if flags is None else np.asarray(flags, bool)
    if flags.shape != analysis.scores.shape:
        raise ValueError(
            f"flags must have one value per test item ({len(analysis.scores)}), got shape {flags.shape}"
        )
    watch.stage("drawing the figures")
    figures = _figures(loaded, analysis, projection, threshold, flags)
    predictions = analysis.predictions(flags=flags)
    groups = card_groups(analysis, flags, predictions, threshold, config.cards)
    thumbnails = _thumbnails(analysis, groups, images, watch)
    watch.stage("writing the report")
    embeddings = loaded.embeddings
    sections = [
        f"<h1>Retrieval report: {_text(name)}</h1>",
        f'<p class="meta">Made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with Retrieval Lab · model {_text(embeddings.model)} · '
        f"{embeddings.dim}-dimensional vectors. Opens without a network: everything is inside this file.</p>",
        "<h2>Dataset</h2>",
        _dataset_section(loaded, analysis),
        "<h2>Metrics</h2>",
        _metrics_section(analysis, threshold, threshold_rule, flags),
        *([] if audit is None else ["<h2>Audit</h2>", _audit_section(audit)]),
        "<h2>Threshold</h2>",
        *figures[:-1],
        "<h2>Map</h2>",
        figures[-1],
        f"<h2>Test items and their top-{min(analysis.config.k, NEIGHBOURS_SHOWN)} train neighbours</h2>",
        "<p>Green: the neighbour's label is the item's true one. Images are downscaled.</p>",
        *(_card_group(analysis, group, flags, predictions, thumbnails) for group in groups),
    ]
    return _page(name, "\n".join(sections))


def write_report(path: Path, page: str) -> None:
    """Write the report, replacing `path` whole or not at all."""
    with replaced_atomically(Path(path)) as partial:
        partial.write_text(page, encoding="utf-8")


def _figures(
    loaded: LoadedEmbeddings,
    analysis: Analysis,
    projection: Projection,
    threshold: float,
    flags: np.ndarray,
) -> list[str]:
    """The threshold figures and, last, the map, as HTML divs: plotly.js inlined in the first one only."""
    sweep = analysis.sweep
    grid = sweep.grid()
    figures = [
        (
            "contamination",
            contamination_curve(grid, sweep.contamination(grid), threshold, float(flags.mean())),
        ),
        ("scores", score_histogram(analysis.scores, analysis.train_loo_scores, threshold)),
    ]
    if sweep.has_map:
        k = analysis.config.k
        figures.append(
            (
                "map-at-k",
                metric_curve(
                    grid, sweep.map_at(grid), threshold, f"MAP@{k}", best=sweep.best_map_threshold()
                ),
            )
        )
    points = analysis_map_points(loaded.embeddings, analysis, projection, threshold)
    points.loc[points["split"] == TEST, "flag"] = flags
    note = ""
    if len(points) > MAP_POINT_LIMIT:
        sample = np.sort(
            np.random.default_rng(SAMPLE_SEED).choice(len(points), MAP_POINT_LIMIT, replace=False)
        )
        note = (
            f'<p class="note">The map draws a random sample of {MAP_POINT_LIMIT:,} of the {len(points):,} points, '
            "to keep this file small; the projection was fitted on all of them.</p>"
        )
        points = points.iloc[sample]
    map_figure = scatter_map(points, MAP_COLOURING, method=METHOD_NAMES[projection.config.method])
    map_figure.update_layout(height=MAP_HEIGHT)
    notes = "".join(
        f'<p class="note">{_text(projection_note)}</p>' for projection_note in projection.notes
    )
    figures.append(("map", map_figure))
    divs = [
        pio.to_html(
            figure,
            include_plotlyjs=index == 0,
            full_html=False,
            config=FIGURE_CONFIG,
            div_id=f"figure-{key}",
        )
        for index, (key, figure) in enumerate(figures)
    ]
    divs[-1] = note + divs[-1] + notes
    return [f'<div class="figure">{div}</div>' for div in divs]


def _thumbnails(
    analysis: Analysis, groups: list[CardGroup], images: Mapping[str, Path], watch: Watch
) -> dict[str, str | None]:
    """Data URIs of the images the cards show, each made once, by item id: None for an image that cannot be read,
    no entry for an item without an image (an embeddings Parquet has none)."""
    k = min(analysis.config.k, NEIGHBOURS_SHOWN)
    test_ids = [str(analysis.test.ids[row]) for group in groups for row in group.rows]
    train_rows = [
        index
        for group in groups
        for row in group.rows
        for index in analysis.neighbours.indices[row, :k]
        if index >= 0
    ]
    wanted = [
        item_id
        for item_id in dict.fromkeys(
            test_ids + [str(analysis.train.ids[index]) for index in train_rows]
        )
        if item_id in images
    ]
    shrunk = thumbnails([images[item_id] for item_id in wanted], THUMBNAIL_EDGE, watch)
    return {
        item_id: None if image is None else jpeg_uri(image)
        for item_id, image in zip(wanted, shrunk)
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of cells that are already HTML (escaped by the caller)."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _dataset_section(loaded: LoadedEmbeddings, analysis: Analysis) -> str:
    train_labels = Counter(str(label) for label in analysis.train.labels)
    test_labels = (
        Counter(str(label) for label in analysis.truth) if analysis.truth is not None else Counter()
    )
    splits = [
        [TRAIN, f"{len(analysis.train.ids):,}", f"{len(train_labels):,} classes"],
        [
            TEST,
            f"{len(analysis.test.ids):,}",
            "no true labels"
            if analysis.truth is None
            else f"true labels given; {test_labels[DISTRACTOR]:,} distractors ({DISTRACTOR})",
        ],
    ]
    parts = [_table(["split", "items", "labels"], splits)]
    if loaded.rejected:
        parts.append(
            f'<p class="note">{len(loaded.rejected):,} files were refused when the dataset was read.</p>'
        )
    ranked = sorted(train_labels.items(), key=lambda item: (-item[1], item[0]))
    rows = [
        [
            _text(label),
            f"{count:,}",
            f"{test_labels[label]:,}" if analysis.truth is not None else "–",
        ]
        for label, count in ranked[:CLASSES_LISTED]
    ]
    parts.append(_table(["class", "train items", "test items (truth)"], rows))
    if len(ranked) > CLASSES_LISTED:
        parts.append(
            f'<p class="note">The {CLASSES_LISTED} largest classes of {len(ranked):,}.</p>'
        )
    return "\n".join(parts)


def _audit_section(audit: Audit) -> str:
    """The audit's cuts and counts, and its AUDIT_FINDINGS_SHOWN surest findings of each kind, as text."""
    counts = audit.counts()
    parts = [
        "<p>What in the data could mislead the score: test images that copy a train image (leakage), train "
        "images none of whose nearest train images shares their label, duplicates inside a split and train "
        "classes that look like one. Each cut is chosen from the data.</p>",
        _table(
            ["finding", "count"],
            [[_text(KIND_NAMES[kind]), f"{count:,}"] for kind, count in counts.items()],
        ),
        _table(
            ["cut for", "cosine", "how it was chosen"],
            [
                [_text(CUT_SCOPES[scope]), f"{cut.value:.4f}", _text(cut.source)]
                for scope, cut in audit.cuts.items()
            ],
        ),
    ]
    findings = audit.findings()
    for kind in KINDS:
        shown = [finding for finding in findings if finding.kind == kind][:AUDIT_FINDINGS_SHOWN]
        if shown:
            parts.append(
                f"<p>{_text(KIND_NAMES[kind])}, the surest {len(shown)} of {counts[kind]:,}:</p>"
            )
            parts.append(
                _table(
                    ["image", "label", "other image", "other label", "suggested label", "score"],
                    [
                        [
                            _text(f.id),
                            _text(f.label),
                            _text(f.other_id),
                            _text(f.other_label),
                            _text(f.suggested_label),
                            f"{f.score:.4f}",
                        ]
                        for f in shown
                    ],
                )
            )
    return "\n".join(parts)


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _text(value: object) -> str:
    """User text as HTML text: elided to DISPLAY_LIMIT characters, then with the whole of it (up to
    FULL_TEXT_LIMIT) in a title, which a pointer shows on hover."""
    shown = inert_html(value, DISPLAY_LIMIT)
    whole = inert_html(value, FULL_TEXT_LIMIT)
    return shown if shown == whole else f'<span title="{whole}">{shown}</span>'


def _interval(ends, shown, meaning: str) -> str:
    """An interval's sentence after a figure's explanation; nothing without one."""
    if ends is None:
        return ""
    return f" {1 - INTERVAL_LEFT_OUT:.0%} interval {shown(ends[0])}–{shown(ends[1])}, {meaning}."


def _metrics_section(
    analysis: Analysis, threshold: float, threshold_rule: str, flags: np.ndarray
) -> str:
    """The metrics as a table of name, value and one plain sentence saying what the value means."""
    report = analysis.report(threshold, flags)
    k = analysis.config.k
    minus = f'"{DISTRACTOR}"'
    rows = [
        [
            "threshold",
            f"{threshold:.4f}",
            "A test image whose best cosine similarity to a train image is below it is flagged as a "
            f"distractor. How it was chosen: {_text(threshold_rule)}.",
        ],
        [
            "flagged as distractors",
            f"{report.flagged:,} of {report.test_items:,} ({report.flagged_share:.1%})",
            f"The test images below the threshold: each gets {minus} as its first guess.",
        ],
        [
            f"where {minus} goes",
            _text(analysis.placement),
            f'"first": {minus} leads the guesses of flagged images only. "optimal": every other image also '
            f"gets {minus} at the rank where it is expected to add most to MAP@{k}, or nowhere. "
            f"Why this one: {_text(analysis.placement_source)}.",
        ],
        [
            f"expected MAP@{k}",
            _number(report.expected_map),
            f"The MAP@{k} the placement model predicts from the scores alone, without the test images' "
            "true labels: what to expect where they are unknown."
            + _interval(
                report.expected_map_interval,
                _number,
                f"where the measured MAP@{k} should fall",
            ),
        ],
        [
            "estimated distractor share",
            "n/a"
            if report.estimated_distractor_share is None
            else f"{report.estimated_distractor_share:.1%}",
            "The share of test images the placement model puts outside the train classes, fitted to the "
            "scores alone."
            + _interval(
                report.estimated_distractor_share_interval,
                "{:.1%}".format,
                "where the true share should fall",
            ),
        ],
    ]
    if (measured := report.measured) is None:
        rows.append(
            [
                f"MAP@{k}",
                "n/a",
                f"The test images have no true labels, so MAP@{k} cannot be measured; the expected "
                f"MAP@{k} above estimates it.",
            ]
        )
    else:
        best_threshold, best_map = analysis.sweep.best_map_threshold()
        rows += [
            [
                f"MAP@{k}",
                _number(measured.map_at_k),
                f"Mean average precision at {k}, the score to beat: an image scores 1 when its true label "
                f"({minus} for a distractor) is its first guess, 1/2 when second, and so on to 1/{k}, and 0 "
                "when it is not among them; this is the average over the test images.",
            ],
            [
                f"MAP@{k} with {minus} first",
                _number(measured.map_by_placement["first"]),
                f'The MAP@{k} if {minus} had gone to the flagged images only, first (placement "first").',
            ],
            [
                f"MAP@{k} with {minus} optimal",
                _number(measured.map_by_placement["optimal"]),
                f"The MAP@{k} if every other image had also got {minus} at its best expected rank "
                '(placement "optimal").',
            ],
            [
                f"best MAP@{k} with truth",
                _number(best_map),
                f"The highest MAP@{k} any threshold reaches on these test images, at {best_threshold:.4f}: "
                "known only because their true labels are given.",
            ],
            [
                f"mP@{k}",
                _number(measured.mean_precision),
                f"Mean precision at {k}: the share of an image's {k} nearest train images that have its "
                "class, averaged over the test images that are not distractors.",
            ],
            [
                "top-1 accuracy",
                _number(measured.top1_accuracy),
                f"The share of test images whose first guess is right ({minus} is right for a distractor).",
            ],
            [
                "distractor detection",
                f"F1 {_number(measured.detection.f1, 3)}",
                f"Precision {_number(measured.detection.precision, 3)}: the share of flagged images that are distractors. "
                f"Recall {_number(measured.detection.recall, 3)}: the share of distractors that are flagged. F1 combines the "
                "two (their harmonic mean).",
            ],
        ]
    notes = "".join(f'<p class="note">{_text(note)}</p>' for note in analysis.notes)
    return _table(["", "value", "what it means"], rows) + notes


def _card_group(
    analysis: Analysis,
    group: CardGroup,
    flags: np.ndarray,
    predictions: list[list[str]],
    thumbnails: Mapping[str, str | None],
) -> str:
    cards = (
        "".join(_card(analysis, row, flags, predictions, thumbnails) for row in group.rows)
        or '<p class="note">None.</p>'
    )
    return f'<h3>{group.title} ({len(group.rows)})</h3><p class="note">{group.why}.</p><div class="cards">{cards}</div>'


def _card(
    analysis: Analysis,
    row: int,
    flags: np.ndarray,
    predictions: list[list[str]],
    thumbnails: Mapping[str, str | None],
) -> str:
    k = min(analysis.config.k, NEIGHBOURS_SHOWN)
    item_id = str(analysis.test.ids[row])
    truth = None if analysis.truth is None else str(analysis.truth[row])
    verdict = "flagged" if flags[row] else "kept"
    lines = [
        f"<b>{_text(item_id)}</b>",
        f"score {analysis.scores[row]:.3f} · {verdict}",
        "truth " + ("unknown" if truth is None else _text(truth)),
        "predicted " + " · ".join(_text(label) for label in predictions[row]),
    ]
    query = _picture(item_id, thumbnails) + "<br>".join(lines)
    neighbours = []
    for index, similarity in zip(
        analysis.neighbours.indices[row, :k], analysis.neighbours.similarities[row, :k]
    ):
        if index < 0:
            continue
        label = str(analysis.train.labels[index])
        train_id = str(analysis.train.ids[index])
        match = ' class="match"' if label == truth else ""
        neighbours.append(
            f"<li{match}>{_picture(train_id, thumbnails)}{_text(label)}<br>cosine {similarity:.3f}<br><small>{_text(train_id)}</small></li>"
        )
    return f'<div class="card {verdict}"><div class="query">{query}</div><ol class="neighbours">{"".join(neighbours)}</ol></div>'


def _picture(item_id: str, thumbnails: Mapping[str, str | None]) -> str:
    if item_id not in thumbnails:
        return ""
    uri = thumbnails[item_id]
    if uri is None:
        return '<div class="no-image">image unreadable</div>'
    return f'<img src="{uri}" alt="{inert_html(item_id)}">'


# Text from the data may be one long word (a data: URL, a label without spaces): "anywhere" lets it
# break at any character, and counts those breaks when tables and flex items are sized, so nothing
# grows past the page; cards wrap their neighbours on narrow screens. Every table's second column
# holds a number or a short value, kept on one line.
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; overflow-wrap: anywhere; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; } h3 { margin-bottom: 0.2rem; }
.meta, .note { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.5rem 0; max-width: 100%; } th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
td:nth-child(2) { white-space: nowrap; }
.figure { margin: 1rem 0; }
.cards { display: flex; flex-direction: column; gap: 0.6rem; }
.card { display: flex; flex-wrap: wrap; gap: 1rem; border: 1px solid #ddd; border-left: 4px solid #ff7f0e; padding: 0.5rem; border-radius: 4px; }
.card.flagged { border-left-color: #d62728; }
.query { width: 220px; flex: none; font-size: 0.85rem; }
.neighbours { display: flex; flex-wrap: wrap; gap: 0.5rem; list-style: none; padding: 0; margin: 0; min-width: 0; }
.neighbours li { width: 110px; font-size: 0.8rem; padding: 2px; }
.neighbours li.match { background: #e3f4e1; }
img, .no-image { display: block; width: 96px; height: 96px; object-fit: contain; background: #f3f3f3; margin-bottom: 0.2rem; }
.no-image { color: #888; font-size: 0.75rem; text-align: center; line-height: 96px; }
"""


def _page(name: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Retrieval report: {inert_html(name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
