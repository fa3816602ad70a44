"""Text ↔ image page: CLIP scores between texts and images, softmax over the texts, zero-shot labels."""

import streamlit as st

from core.display import count_text
from core.io.texts import prompts_for
from core.methods.regression import rank_prompts
from core.methods.zeroshot import measured, results_table
from core.prediction.metrics import top1_accuracy
from core.records import DISTRACTOR
from core.session.queries import read_uploaded_images, texts_from_upload
from pages import state, ui

TEXT_SOURCES = ("Class prompts", "Typed", "A .txt or .csv file")
IMAGE_SOURCES = ("Test images", "Uploaded images")
DEFAULT_TEMPLATE = "a photo of a {label}"
DEFAULT_IMAGES, MAX_TEST_IMAGES = 16, 500
GALLERY_LIMIT = 16  # images shown with their zero-shot text; the tables hold them all
MATRIX_TEXT_LIMIT = 50  # text columns in the on-screen score matrix; results.csv has every pair
SCORE_COLUMNS = {
    "clip_score": st.column_config.NumberColumn("CLIP score", format="%.1f"),
    "probability": st.column_config.NumberColumn("probability", format="percent"),
}

st.title("Text ↔ image")
current = state.active_analysis()
analysis = current.analysis

st.caption(
    "How well texts describe images, by CLIP: the **CLIP score** is 100 × cosine similarity (0 when negative); "
    "the **probability** shares each image among the candidate texts (softmax at CLIP's logit scale 100); "
    "the most probable text is the image's **zero-shot label**."
)
if not state.server().supports_text(current):
    state.show_no_text_support(current, "score texts against images")
    st.stop()

classes = sorted(set(analysis.train.labels.tolist()))
texts_column, images_column = st.columns(2)
with texts_column:
    st.subheader("Texts")
    text_source = (
        st.segmented_control("Texts from", TEXT_SOURCES, default=TEXT_SOURCES[0], key="text_source")
        or TEXT_SOURCES[0]
    )
    texts = []
    try:
        if text_source == "Typed":
            typed = st.text_area(
                "One text per line", "\n".join(prompts_for(classes[:3])), key="text_typed"
            )
            texts = [line.strip() for line in typed.splitlines() if line.strip()]
        elif text_source == "A .txt or .csv file":
            upload = st.file_uploader(
                "Texts: a .txt (one per line) or a .csv", type=["txt", "csv"], key="text_upload"
            )
            column = st.text_input(
                "CSV column", placeholder="text, prompt or caption", key="text_column"
            )
            texts = texts_from_upload(current.ws, upload, column.strip()) if upload else []
        else:
            template = st.text_input(
                "Prompt per train class", DEFAULT_TEMPLATE, key="text_template"
            )
            texts = prompts_for(classes, template)
    except ValueError as error:
        st.error(ui.plain(error))
    unique_texts = list(dict.fromkeys(texts))
    if len(unique_texts) < len(texts):
        st.caption(f"{count_text(len(texts) - len(unique_texts))} repeated texts were dropped.")
    texts = unique_texts
    if texts:
        st.caption(f"{count_text(len(texts))} texts, e.g. “{ui.plain(texts[0])}”.")

with images_column:
    st.subheader("Images")
    image_source = (
        st.segmented_control(
            "Images from", IMAGE_SOURCES, default=IMAGE_SOURCES[0], key="image_source"
        )
        or IMAGE_SOURCES[0]
    )
    if image_source == "Uploaded images":
        uploads = st.file_uploader(
            "Images", type=ui.IMAGE_UPLOAD_TYPES, accept_multiple_files=True, key="image_uploads"
        )
        names, images, refused = read_uploaded_images(uploads or [])
        for rejection in refused:
            st.warning(f"**{ui.plain(rejection.name)}** skipped: {ui.plain(rejection.reason)}")
        thumbnails = images
    else:
        test = analysis.test
        available = min(len(test.ids), MAX_TEST_IMAGES)
        count = (
            st.slider(
                "First N test images",
                1,
                available,
                min(DEFAULT_IMAGES, available),
                key="image_count",
            )
            if available > 1
            else 1
        )
        names, images = list(test.ids[:count]), None
        thumbnails = [ui.image(current, name) for name in names[:GALLERY_LIMIT]]
        if warning := state.server().query_model_warning(current):
            st.warning(ui.plain(warning))

if not texts or not names:
    st.info("Give at least one text and one image to score them.")
    st.stop()

try:
    with measured() as stats:
        text_vectors = state.server().embed_texts(current, texts)
        image_vectors = (
            test.vectors[:count] if images is None else state.server().embed_images(current, images)
        )
        ranking = rank_prompts(image_vectors, text_vectors, texts, k=len(texts))
except ValueError as error:
    st.error(f"The texts cannot be scored against these images: {ui.plain(error)}")
    st.stop()
table = results_table(names, ranking)
best = table[table["rank"] == 1].drop(columns="rank").rename(columns={"text": "zero-shot text"})

figures = st.columns(5)
figures[0].metric("Images", count_text(len(names)))
figures[1].metric("Texts", count_text(len(texts)))
figures[2].metric(
    "Wall time",
    f"{stats.wall_seconds:.2f} s",
    help="Embedding the texts (and uploads) and scoring every pair.",
)
figures[3].metric(
    "Peak memory",
    f"{stats.peak_memory_mib:,.0f} MiB",
    help="Peak resident memory of the server process so far.",
)
if images is None and analysis.truth is not None:
    truth = analysis.truth[:count]
    best["true class"] = truth
    known = truth != DISTRACTOR
    if text_source == TEXT_SOURCES[0] and known.any():
        zero_shot_classes = [[classes[index]] for index in ranking.indices[known, 0]]
        figures[4].metric(
            "Zero-shot accuracy",
            f"{top1_accuracy(list(truth[known]), zero_shot_classes):.1%}",
            help="Share of these images whose best prompt names their true class; distractors left out.",
        )

st.subheader("Zero-shot labels")
ui.image_grid(
    thumbnails[:GALLERY_LIMIT],
    [
        f"{name}: {text} ({probability:.0%})"
        for name, text, probability in zip(
            best["image"], best["zero-shot text"], best["probability"]
        )
    ][:GALLERY_LIMIT],
)
st.dataframe(best, hide_index=True, width="stretch", column_config=SCORE_COLUMNS)
with st.expander("CLIP score of every pair"):
    matrix = table.pivot_table(
        index="image", columns="text", values="clip_score", aggfunc="first", sort=False
    )
    if len(texts) > MATRIX_TEXT_LIMIT:
        st.caption(
            f"The first {MATRIX_TEXT_LIMIT} of {count_text(len(texts))} texts; results.csv holds every pair."
        )
    st.dataframe(matrix.iloc[:, :MATRIX_TEXT_LIMIT].round(1), width="stretch")

downloads = st.columns(2)
downloads[0].download_button(
    "results.csv",
    table.assign(
        run_wall_time_s=round(stats.wall_seconds, 3),
        peak_memory_mib=round(stats.peak_memory_mib, 1),
    ).to_csv(index=False),
    file_name="results.csv",
    mime="text/csv",
    on_click="ignore",
    help="One row per (image, text), each image's texts best first, with the run's wall time and peak memory.",
)
downloads[1].download_button(
    "stats.log", stats.log_text(), file_name="stats.log", mime="text/plain", on_click="ignore"
)
