"""Map page: train and test embeddings in 2-D (UMAP, t-SNE, PCA); select points to see their images."""

import streamlit as st

from core.display import count_text
from core.maps.figures import COLOUR_MODES, analysis_map_points, scatter_map, selected_rows
from core.maps.projection import (
    METHOD_NAMES,
    METRICS,
    PROJECTION_METHODS,
    TSNE_SAMPLE_LIMIT,
    ProjectionConfig,
)
from pages import state, ui

COLOUR_NAMES = {
    "split": "split",
    "label": "class",
    "flag": "distractor flag",
    "score": "distractor score",
}
GALLERY_LIMIT = 40  # thumbnails shown for a selection; the table below lists every selected point
PCA_DIMS = ProjectionConfig().pca_first
# Flags first: at 100k points the distractors are what a split colouring hides.
DEFAULT_COLOUR = "flag"

st.title("Map")
current = state.active_analysis()
analysis, threshold = current.analysis, current.threshold

st.caption(
    "Train and test embeddings in two dimensions. UMAP and PCA are fitted on train and place test in the "
    f"same coordinates; t-SNE is fitted on both, on a random sample of {count_text(TSNE_SAMPLE_LIMIT)} above that many "
    "points unless asked for all. Draw a box or lasso round points to see their images."
)
n_points = len(analysis.train.vectors) + len(analysis.test.vectors)

method_column, colour_column = st.columns([2, 3])
method = method_column.segmented_control(
    "Method",
    PROJECTION_METHODS,
    default=PROJECTION_METHODS[0],
    format_func=METHOD_NAMES.get,
    key="map_method",
)
method = method or PROJECTION_METHODS[0]
colour_by = colour_column.segmented_control(
    "Colour by",
    COLOUR_MODES,
    default=DEFAULT_COLOUR,
    format_func=COLOUR_NAMES.get,
    key="map_colour",
)
colour_by = colour_by or DEFAULT_COLOUR

defaults = ProjectionConfig()
with st.expander("Projection settings"):
    pca_column, metric_column, first_column, second_column, seed_column = st.columns(5)
    pca_first = pca_column.toggle(
        f"PCA to {PCA_DIMS} dims first",
        value=True,
        disabled=method == "pca",
        help="Faster and less noisy for UMAP and t-SNE on 512-d and wider vectors.",
        key="map_pca_first",
    )
    metric = metric_column.selectbox(
        "Distance", METRICS, disabled=method == "pca", key="map_metric"
    )
    n_neighbors, min_dist, perplexity = defaults.n_neighbors, defaults.min_dist, defaults.perplexity
    tsne_all_points = False
    if method == "umap":
        n_neighbors = first_column.slider(
            "Neighbours", 2, 100, defaults.n_neighbors, key="map_n_neighbors"
        )
        min_dist = second_column.slider(
            "Minimum distance", 0.0, 1.0, defaults.min_dist, 0.05, key="map_min_dist"
        )
    if method == "tsne":
        perplexity = first_column.slider(
            "Perplexity", 2.0, 100.0, defaults.perplexity, 1.0, key="map_perplexity"
        )
        tsne_all_points = second_column.toggle(
            "All points",
            value=False,
            disabled=n_points <= TSNE_SAMPLE_LIMIT,
            help=f"Above {count_text(TSNE_SAMPLE_LIMIT)} points t-SNE is fitted on a random sample of that many and the "
            "others are placed beside their nearest fitted points; this fits every point, which takes minutes.",
            key="map_tsne_all_points",
        )
    seed = seed_column.number_input("Seed", 0, 2**31 - 1, defaults.seed, key="map_seed")

predicted_labels = False
if colour_by == "label":
    if analysis.truth is None:
        predicted_labels = True
        st.caption(
            "Test labels are unknown, so test points are coloured by their predicted top-1 class."
        )
    else:
        test_labels = st.radio(
            "Test points show",
            ["true class", "predicted top-1 class"],
            horizontal=True,
            key="map_test_labels",
        )
        predicted_labels = test_labels != "true class"
if colour_by == "flag" or predicted_labels:
    st.caption(
        f"Distractor flags at the threshold {threshold:.3f} (set it on the **Distractors** page)."
    )
if colour_by == "score":
    st.caption(
        "Test points show their distractor score; train points their score against the rest of train."
    )

try:
    config = ProjectionConfig(
        method=method,
        pca_first=PCA_DIMS if pca_first else None,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        perplexity=perplexity,
        metric=metric,
        seed=int(seed),
        tsne_limit=None if tsne_all_points else TSNE_SAMPLE_LIMIT,
    )
    projection = state.projection(current, config)
except ValueError as error:
    st.error(f"The map cannot be drawn: {ui.plain(error)}")
    st.stop()

points = analysis_map_points(
    current.loaded.embeddings,
    analysis,
    projection,
    threshold,
    predicted_test_labels=predicted_labels,
)
event = st.plotly_chart(
    scatter_map(points, colour_by, method=METHOD_NAMES[method]),
    key="map_chart",
    on_select="rerun",
    selection_mode=("points", "box", "lasso"),
    height=650,
)
for note in projection.notes:
    st.caption(f"ℹ️ {ui.plain(note)}")

rows = selected_rows(event, len(points))
if not rows:
    st.info(
        "Select points with the box or lasso tool (top right of the map) to see their images here."
    )
    st.stop()

selected = points.loc[rows]
st.subheader(f"{count_text(len(rows))} selected")
if len(rows) > GALLERY_LIMIT:
    st.caption(
        f"Showing the first {GALLERY_LIMIT} images; the table lists all {count_text(len(rows))}."
    )
shown = selected.head(GALLERY_LIMIT)
ui.image_grid(
    [ui.image(current, item_id) for item_id in shown["id"]],
    [
        f"{item_id} · {split} · {label}"
        for item_id, split, label in zip(shown["id"], shown["split"], shown["label"].fillna("?"))
    ],
)
st.dataframe(selected[["id", "split", "label", "score", "flag"]], hide_index=True, width="stretch")
