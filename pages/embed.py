"""Embed page: choose the model, precision, runtime and batch size, and embed the active dataset with progress."""

from dataclasses import fields

import streamlit as st

from core.display import count_text
from core.embedding.config import BASELINE_MODEL, EmbedConfig, list_models
from core.methods.ensemble import search_weights, validation_map
from core.records import TEST, TRAIN
from core.session.models import choose_model, chosen_model
from core.session.server import ActiveAnalysis
from core.session.vectors import (
    EnsembleMember,
    ensemble_recipe,
    predict_config,
    reweighted,
    save_ensemble,
    saved_ensemble,
)
from pages import state, ui

st.title("Embed")
ws = state.workspace()
entry = state.server().datasets(ws).active()
saved = chosen_model(ws)
st.caption(f"Dataset: **{ui.plain(entry.name)}**")


def show_vectors(current: ActiveAnalysis) -> None:
    """The active dataset's vectors: how many, their size, and how many were computed, cached or refused."""
    loaded = current.loaded
    emb = loaded.embeddings
    counts = {split: int(emb.mask(split).sum()) for split in (TRAIN, TEST)}
    cells = st.columns(5)
    cells[0].metric("Vectors", count_text(len(emb.ids)))
    cells[1].metric("Dimensions", count_text(emb.dim))
    cells[2].metric("Computed", count_text(loaded.computed))
    cells[3].metric("From cache", count_text(loaded.from_cache))
    cells[4].metric("Refused", count_text(len(loaded.rejected)))
    st.caption(
        f"Model identity: {ui.plain(emb.model)} · train {count_text(counts['train'])}, test {count_text(counts['test'])} · {loaded.seconds:.1f} s"
    )
    if loaded.computed and loaded.seconds:
        st.caption(f"{loaded.computed / loaded.seconds:.1f} images/s when computed.")
    if loaded.rejected:
        with st.expander(f"Refused while embedding ({count_text(len(loaded.rejected))})"):
            st.dataframe(
                [{"file": r.name, "reason": r.reason} for r in loaded.rejected], hide_index=True
            )


if entry.kind == "parquet":
    st.info(
        "This dataset's vectors came with it, in its Parquet file: they are already there and the analysis "
        "pages use them as they are. To embed images, choose an image dataset on the **Data** page."
    )
    show_vectors(state.active_analysis())
    st.stop()

known = list_models()
other = "another Hugging Face id or checkpoint folder…"
options = [*known, other]
choice = st.selectbox(
    "Model",
    options,
    index=options.index(saved.model) if saved.model in known else len(options) - 1,
    format_func=lambda name: name if name == other else f"{name} — {known[name]}",
)
model = (
    st.text_input(
        "Hugging Face id, or checkpoint folder under the data root",
        value=saved.model if saved.model not in known else "",
    )
    if choice == other
    else choice
)
columns = st.columns(3)


def config_field(name: str):
    """An EmbedConfig field, whose metadata holds its help and choices."""
    return next(field for field in fields(EmbedConfig) if field.name == name)


def config_choice(column, name: str, label: str) -> str:
    """A radio over an EmbedConfig field's choices, with its help, at the saved value."""
    spec = config_field(name)
    choices = spec.metadata["choices"]
    return column.radio(
        label,
        choices,
        index=choices.index(getattr(saved, name)),
        horizontal=True,
        disabled=model == BASELINE_MODEL,
        help=spec.metadata["help"],
    )


precision = config_choice(columns[0], "precision", "Precision")
runtime = config_choice(columns[1], "runtime", "Runtime")
batch_size = columns[2].number_input(
    "Batch size",
    1,
    4096,
    saved.batch_size,
    placeholder="auto",
    help=config_field("batch_size").metadata["help"],
)

with st.expander("Ensemble: combine several models"):
    st.caption(
        "Each model's vectors are scaled to unit length first, so no model dominates by its norm; then they "
        "are summed with their weights when the dimensions match, or concatenated otherwise. "
        "The model above has weight 1."
    )
    members = saved_ensemble(ws)
    saved_weights = {member.model: member.weight for member in members}
    others = [name for name in known if name != model]
    extra = st.multiselect(
        "Also use", others, default=[name for name in saved_weights if name in others]
    )
    weights = {
        name: st.number_input(
            f"Weight of {name}", 0.0, 10.0, float(saved_weights.get(name, 0.5)), 0.05
        )
        for name in extra
    }
    if st.button("Save ensemble", disabled=saved_weights == weights):
        save_ensemble(ws, [EnsembleMember(name, weight) for name, weight in weights.items()])
        st.rerun()
    if members and st.button("Search the weights, one model at a time"):
        current = state.active_analysis()
        recipe = ensemble_recipe(members, current.embed_config, state.server().models)
        predict = predict_config(ws)
        with st.status(
            "Searching weights on train with held-out classes as distractors…"
        ) as status:
            search = search_weights(
                [state.embeddings(current.entry, config).embeddings for config, _ in recipe.parts],
                validation_map(predict),
                progress=lambda step: status.update(
                    label=f"{ui.plain(step.model)} at ratio {step.ratio:.3f}: {step.metric:.4f}"
                ),
            )
            status.update(
                label=f"Best validation MAP@{predict.k} {search.metric:.4f}", state="complete"
            )
        st.code(search.table(), language=None)
        try:
            save_ensemble(ws, reweighted(members, recipe, search.weights))
        except ValueError as error:
            st.warning(f"{ui.plain(error)}.")
        else:
            st.caption(
                "The weights found are saved, relative to the main model's; reload the page to use them."
            )

if st.button("Embed", type="primary", disabled=not model):
    try:
        choose_model(
            ws,
            EmbedConfig(
                model=model.strip(),
                batch_size=None if batch_size is None else int(batch_size),
                precision=precision,
                runtime=runtime,
            ),
        )
    except ValueError as error:  # a bad option, or a model folder this server does not serve
        st.error(ui.plain(error))
        st.stop()
    st.rerun()  # the sidebar, drawn before the page, names the model chosen

current = state.active_analysis()
show_vectors(current)
# The precision the model settled on while embedding (for "auto", the first batch's check against fp32).
if note := state.server().query_model(current).model.embedder.precision_note:
    st.caption(ui.plain(note))
