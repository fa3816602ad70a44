"""Neighbours page: a query's nearest train images, its predicted labels and its distractor verdict."""

import streamlit as st

from core.prediction.metrics import average_precision_at_k
from core.prediction.placement import TIE
from core.prediction.predict import place_minus_one
from core.search.index import Neighbours
from core.session.queries import read_uploaded_images
from pages import state, ui

QUERY_KINDS = ("A test image", "An uploaded image", "A text")

st.title("Neighbours")
current = state.active_analysis()
analysis, threshold = current.analysis, current.threshold
k = analysis.config.k
train, test = analysis.train, analysis.test

st.caption(
    f"The {k} train images nearest to a query, the {k} labels they predict and whether the query "
    f"counts as a distractor at the current threshold ({threshold:.3f}, set on the **Distractors** page)."
)
kind = (
    st.segmented_control("Query", QUERY_KINDS, default=QUERY_KINDS[0], key="neighbours_query_kind")
    or QUERY_KINDS[0]
)

query_image, query_caption, truth = None, "", None
if kind == QUERY_KINDS[1]:
    upload = st.file_uploader("Query image", type=ui.IMAGE_UPLOAD_TYPES, key="neighbours_upload")
    if upload is None:
        st.info("Upload an image to find its nearest train images.")
        st.stop()
    _, images, refused = read_uploaded_images([upload])
    if refused:
        st.error(f"**{ui.plain(upload.name)}** cannot be used: {ui.plain(refused[0].reason)}")
        st.stop()
    query_image, query_caption = images[0], upload.name
    query_vectors = state.server().embed_images(current, images)
elif kind == QUERY_KINDS[2]:
    if not state.server().supports_text(current):
        state.show_no_text_support(current, "search by text")
        st.stop()
    text = st.text_input(
        "Text query", value=f"a photo of a {train.labels[0]}", key="neighbours_text"
    )
    if not text.strip():
        st.info("Type a description of what to look for.")
        st.stop()
    query_caption = f"“{text.strip()}”"
    query_vectors = state.server().embed_texts(current, [text.strip()])
    st.caption(
        "Text-to-image similarities run lower than image-to-image ones, so the distractor verdict means little here."
    )
else:
    position = st.selectbox(
        "Test image",
        range(len(test.ids)),
        format_func=lambda row: test.ids[row],
        key="neighbours_test_row",
    )
    query_image, query_caption = ui.image(current, test.ids[position]), test.ids[position]
    truth = None if analysis.truth is None else analysis.truth[position]

if kind == QUERY_KINDS[0]:
    # The analysis's own search: a fresh one-row search can differ in the last float bit, and an item
    # scoring exactly the threshold would then get another verdict here than in the submission.
    row = slice(position, position + 1)
    neighbours = Neighbours(analysis.neighbours.similarities[row], analysis.neighbours.indices[row])
    ranked_labels, scores = analysis.retrieval.labels[row], analysis.scores[row]
    where = analysis.positions(threshold)[row]
else:
    if warning := state.server().query_model_warning(current):
        st.warning(ui.plain(warning))
    try:
        neighbours, ranked_labels, scores = state.server().search_train(current, query_vectors)
    except ValueError as error:
        st.error(f"The query cannot be searched against this dataset: {ui.plain(error)}")
        st.stop()
    where = analysis.query_positions(ranked_labels, scores, threshold)
score = float(scores[0])
flagged = score < threshold
predicted = place_minus_one(ranked_labels, where, k)[0]
minus_one_at = int(where[0])


def why_there() -> str:
    """Why "-1" stands where it does in this query's row, from the placement rule and the placement model."""
    if flagged:
        return "because the score is below the threshold: flagged items get it first."
    model = analysis.placement_model
    if analysis.placement == "first" or model is None:
        return f'because the placement is "first" ({ui.plain(analysis.placement_source)}): only flagged items get it.'
    expected = model.expected_precisions(scores)[0]
    by_position = " · ".join(
        f"{name} {value:.3f}"
        for name, value in zip([*map(str, range(1, k + 1)), "nowhere"], expected)
    )
    chances = [float(m.distractor_probability(scores)[0]) for m in analysis.bootstrap]
    spread = (
        f" ({min(chances):.1%}–{max(chances):.1%} over class bootstraps of train)"
        if chances
        else ""
    )
    share_low, share_high = analysis.share_interval or (model.contamination, model.contamination)
    if minus_one_at:
        gain = expected[minus_one_at - 1] - expected[-1]
        why = f"where it gains the most expected AP@{k} over leaving it out, {gain:+.3f}"
    else:
        why = (
            f'as no rank gains {TIE} expected AP@{k} or more over leaving it out, and a "-1" that gains '
            "nothing only pushes the last label out"
        )
    return (
        f'{why} ("optimal" placement). With an estimated distractor share of {model.contamination:.0%} '
        f"({share_low:.0%}–{share_high:.0%}), the model puts the chance that the query is a distractor at "
        f"{float(model.distractor_probability(scores)[0]):.1%}{spread} and the true label at rank 1 with "
        f'{float(model.rank_odds(scores)[0, 0]):.1%}; expected AP@{k} with "-1" at each place (flagged items take '
        f"1): {by_position}."
    )


query_column, verdict_column = st.columns([1, 3])
with query_column, st.container(border=True, key="neighbours_query_card"):
    if query_image is not None:
        st.image(query_image, width="stretch")
    st.markdown(f"**Query:** {ui.plain(query_caption)}")
    if truth is not None:
        st.caption(f"true class: {ui.plain(truth)}")
with verdict_column:
    st.metric(
        "Distractor score",
        f"{score:.3f}",
        delta=f"{score - threshold:+.3f} against the threshold {threshold:.3f}",
        help="How close the query is to train (score mode: "
        f"{analysis.config.score_mode}); below the threshold it is flagged as a distractor.",
    )
    if flagged:
        st.warning(
            f'**Distractor**: the score is below the threshold, so "-1" leads the {k} predicted labels.'
        )
    else:
        st.success(
            "**A known class**: the score reaches the threshold, so the best-ranked train label leads the prediction."
        )
    st.markdown(
        "**Predicted labels:** "
        + " · ".join(f"{rank}\\. {ui.plain(label)}" for rank, label in enumerate(predicted, 1))
    )
    if truth is not None:
        st.caption(f"AP@{k} of this prediction: {average_precision_at_k(truth, predicted, k):.2f}")
    st.markdown(
        f'**Where "-1" went:** {f"rank {minus_one_at}" if minus_one_at else "nowhere"}, {why_there()}'
    )

st.subheader(f"Top {min(k, neighbours.k)} train neighbours")
for column, rank, row, similarity in zip(
    st.columns(k), range(1, k + 1), neighbours.indices[0], neighbours.similarities[0]
):
    with column, st.container(border=True, key=f"neighbour_card_{rank}"):
        image = ui.image(current, train.ids[row])
        if image is not None:
            st.image(image, width="stretch")
        st.markdown(f"**{ui.plain(train.labels[row])}**")
        st.caption(f"#{rank} · cosine {similarity:.3f} · {ui.plain(train.ids[row])}")
