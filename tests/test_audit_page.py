"""AppTest runs of the Audit page on digits with known problems injected: findings, the cut, the change measured, downloads."""

import pytest
from test_pages import assert_ran, metrics, run_page

from core.audit.findings import KIND_NAMES, MISLABEL, NEAR_DUPLICATE

# No Streamlit cache is shared between tests, and each has its own workspace home.
pytestmark = pytest.mark.usefixtures("fresh_server")


def test_the_audit_page_counts_each_kind_and_the_cut_moves_them(injected_workspace):
    workspace_id, injected = injected_workspace
    app = run_page("audit", workspace_id)
    assert_ran(app)
    shown = metrics(app)
    assert int(shown[KIND_NAMES[NEAR_DUPLICATE]].replace(",", "")) >= len(injected.copies)
    assert int(shown[KIND_NAMES[MISLABEL]].replace(",", "")) >= 0.9 * len(injected.flipped)
    assert any(markdown.value.startswith("**Leakage:**") for markdown in app.markdown)
    app.slider(key="audit_cut").set_value(1.0).run()
    assert_ran(app)
    assert metrics(app)[KIND_NAMES[NEAR_DUPLICATE]] == "0"


def test_dropping_the_suspected_mislabels_shows_map_before_and_after(injected_workspace):
    workspace_id, _ = injected_workspace
    app = run_page("audit", workspace_id)
    app.button(key="audit_measure").click().run()
    assert_ran(app)
    change = metrics(app)
    assert "MAP@5" in change and "flagged" in change
    assert not app.get("download_button")[1].proto.disabled


def test_the_page_offers_the_findings_a_cleaned_train_list_and_a_relabel_list(injected_workspace):
    workspace_id, _ = injected_workspace
    app = run_page("audit", workspace_id)
    assert_ran(app)
    downloads = {button.proto.label: button for button in app.get("download_button")}
    assert set(downloads) == {"findings.csv", "Cleaned train list (CSV)", "Relabel list (CSV)"}
