import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from core.__main__ import build_parser, main
from core.detection.distractors import DbscanConfig
from core.embedding.config import EmbedConfig
from core.io.demo import write_demo_dataset
from core.prediction.config import PredictConfig
from core.prediction.placement import MAX_K

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("demo"))


def test_demo_then_evaluate_with_the_baseline_prints_map_and_distractor_figures(
    tmp_path, workspace, capsys
):
    assert main(["demo", str(tmp_path / "d")]) == 0
    root = next((tmp_path / "d").iterdir())
    assert main(["evaluate", str(root), "--model", "baseline"]) == 0
    out = capsys.readouterr().out
    for field in (
        "MAP@5",
        "distractor_precision",
        "distractor_recall",
        "distractor_f1",
        "distractor_roc_auc",
        "threshold",
    ):
        assert field in out


def test_predict_writes_a_submission_that_score_reads_back(demo, tmp_path, workspace, capsys):
    submission = tmp_path / "submission.csv"
    assert (
        main(
            [
                "predict",
                str(demo),
                "--model",
                "baseline",
                "--contamination",
                "0.3",
                "--out",
                str(submission),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "threshold:" in out and "flagged as distractors:" in out
    assert re.search(
        r"without the answers: estimated distractor share [\d.]+% \(90% interval [\d.]+%–[\d.]+%\); "
        r"expected MAP@5 [\d.]+ \(90% interval [\d.]+–[\d.]+\)",
        out,
    )
    rows = submission.read_text().splitlines()
    assert rows[0] == "id,predictions" and len(rows) == 1 + len(
        list((demo / "test").rglob("*.jpg"))
    )
    flagged = sum(row.split(",")[1].startswith("-1 ") for row in rows[1:])
    assert flagged == pytest.approx(0.3 * (len(rows) - 1), abs=1)

    truth = tmp_path / "truth.csv"
    lines = ["id,label"] + [f"{p.name},{p.parent.name}" for p in (demo / "test").rglob("*.jpg")]
    truth.write_text("\n".join(lines))
    assert main(["score", str(submission), str(truth)]) == 0
    assert capsys.readouterr().out.startswith("MAP@5 = 0.")


def test_embed_to_parquet_then_evaluate_the_parquet_as_json(demo, tmp_path, workspace, capsys):
    parquet = tmp_path / "e.parquet"
    assert main(["embed", str(demo), "--model", "baseline", "--out", str(parquet)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(parquet), "--auto", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["MAP@5"] <= 1.0 and report["threshold_rule"].startswith(
        "validation on train"
    )
    low, high = report["estimated_distractor_share_interval"]
    assert 0.0 <= low <= high <= 1.0 and 0.0 <= report["estimated_distractor_share"] <= 1.0
    low, high = report["expected_MAP@5_interval"]
    assert low <= report["expected_MAP@5"] <= high


def test_second_embed_computes_nothing(demo, tmp_path, workspace, capsys):
    for _ in range(2):
        assert (
            main(["embed", str(demo), "--model", "baseline", "--out", str(tmp_path / "e.parquet")])
            == 0
        )
    assert "computed 0, from cache" in capsys.readouterr().err


def test_tiny_clip_from_a_local_folder_works_end_to_end(demo, tiny_clip_dir, workspace, capsys):
    assert main(["evaluate", str(demo), "--model", str(tiny_clip_dir), "--batch-size", "32"]) == 0
    assert "MAP@5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "no/such/folder", "--model", "baseline"], "does not exist"),
        (
            ["predict", "DEMO", "--model", "baseline", "--contamination", "1.5", "--out", "x.csv"],
            "contamination must be a share",
        ),
        (
            ["predict", "DEMO", "--model", "baseline", "--k", str(MAX_K + 1), "--out", "x.csv"],
            f"k must be between 1 and {MAX_K}",
        ),
        (["evaluate", "DEMO", "--model", "baseline", "--k", "100000"], "memory grows with k"),
        (
            ["evaluate", "DEMO", "--model", "no-such-org/no-such-model"],
            "cannot load the CLIP model",
        ),
        (
            ["embed", "DEMO", "--model", "baseline", "--batch-size", "0", "--out", "x.parquet"],
            "batch_size",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, demo, workspace, capsys):
    argv = [str(demo) if arg == "DEMO" else arg for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_evaluate_without_test_truth_says_what_is_missing(demo, tmp_path, workspace, capsys):
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "test").mkdir(parents=True)
    for label in (demo / "train").iterdir():
        (unlabelled / "train" / label.name).mkdir(parents=True)
        for image in label.iterdir():
            (unlabelled / "train" / label.name / image.name).write_bytes(image.read_bytes())
    for image in list((demo / "test").rglob("*.jpg"))[:10]:
        (unlabelled / "test" / image.name).write_bytes(image.read_bytes())
    assert main(["evaluate", str(unlabelled), "--model", "baseline"]) == 2
    assert "needs test truth" in capsys.readouterr().err


def test_the_module_runs_as_a_command_with_help():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 0 and "--contamination" in result.stdout and "--auto" in result.stdout
    )


def test_compare_prints_at_least_six_methods_and_verdicts(demo, workspace, capsys):
    assert main(["compare", str(demo), "--model", "baseline"]) == 0
    out = capsys.readouterr().out
    table = out.split("\nmethod ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    scored = [row for row in table if "skipped" not in row and "failed" not in row]
    assert len(scored) >= 6, out
    assert "cosine kNN (pre-trained)" in out and "plain cosine kNN by" in out


def test_compare_json_lists_the_chosen_methods_with_metrics(demo, workspace, capsys):
    assert (
        main(["compare", str(demo), "--model", "baseline", "--methods", "cosine,linear", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [method["key"] for method in report["methods"]] == ["cosine", "linear"]
    assert all(0.0 <= method["MAP@5"] <= 1.0 for method in report["methods"])


def test_ensemble_search_shows_every_step_and_writes_vectors(
    demo, tiny_clip_dir, tmp_path, workspace, capsys
):
    out_file = tmp_path / "ensemble.parquet"
    argv = [
        "ensemble",
        str(demo),
        "--model",
        "baseline",
        "--model",
        str(tiny_clip_dir),
        "--out",
        str(out_file),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.count("tried ") >= 3 and "chosen" in captured.out
    assert out_file.exists()


def test_ensemble_needs_two_models(demo, workspace, capsys):
    assert main(["ensemble", str(demo), "--model", "baseline"]) == 2
    assert "at least two models" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_parquet(demo, tmp_path_factory):
    parquet = tmp_path_factory.mktemp("parquet") / "e.parquet"
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVAL_LAB_HOME", str(home))
        assert main(["embed", str(demo), "--model", "baseline", "--out", str(parquet)]) == 0
    return parquet


@pytest.mark.parametrize("command", ["embed", "predict", "evaluate", "compare"])
def test_every_config_field_is_an_option_with_the_fields_default(command):
    argv = [command, "source"] + (["--out", "o"] if command in ("embed", "predict") else [])
    args = build_parser().parse_args(argv)
    configs = [EmbedConfig] + ([PredictConfig, DbscanConfig] if command != "embed" else [])
    for config in configs:
        for field in fields(config):
            assert getattr(args, field.name) == field.default, f"{config.__name__}.{field.name}"


def test_device_is_an_option_and_refuses_unknown_devices(demo, tmp_path, workspace, capsys):
    assert (
        main(
            [
                "embed",
                str(demo),
                "--model",
                "baseline",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "e.parquet"),
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "embed",
                str(demo),
                "--model",
                "baseline",
                "--device",
                "tpu",
                "--out",
                str(tmp_path / "e.parquet"),
            ]
        )
    assert exited.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


def run_refused(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and ".partial" not in err[0]
    return err[0]


def test_predict_refuses_to_overwrite_its_input_parquet(demo_parquet, workspace, capsys):
    before = demo_parquet.read_bytes()
    error = run_refused(["predict", str(demo_parquet), "--out", str(demo_parquet)], capsys)
    assert f"--out {demo_parquet} is the input" in error
    assert demo_parquet.read_bytes() == before


def test_embed_refuses_to_overwrite_its_input_zip_under_another_name(
    demo, tmp_path, workspace, capsys
):
    dataset_zip = Path(shutil.make_archive(str(tmp_path / "d"), "zip", demo))
    alias = tmp_path / "alias.zip"
    alias.hardlink_to(dataset_zip)
    before = dataset_zip.read_bytes()
    error = run_refused(
        ["embed", str(dataset_zip), "--model", "baseline", "--out", str(alias)], capsys
    )
    assert "is the input" in error
    assert dataset_zip.read_bytes() == before


def test_out_that_is_a_fifo_or_a_folder_is_refused_naming_only_the_users_path(
    demo_parquet, tmp_path, workspace, capsys
):
    fifo, folder = tmp_path / "pipe", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    for out in (fifo, folder):
        error = run_refused(["predict", str(demo_parquet), "--out", str(out)], capsys)
        assert (
            error == f"error: --out {out} is not a regular file; give the path of a file to write"
        )
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and folder.is_dir() and not any(folder.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "{demo}", "--model", "baseline", "--out", "{demo}/test/submission.csv"],
        ["report", "{demo}", "--model", "baseline", "--out", "{demo}/report.html"],
        ["embed", "{demo}", "--model", "baseline", "--out", "{demo}/train/vectors/"],
        ["predict", "{parts}", "--out", "{parts}/submission.csv"],
    ],
    ids=["predict into test/", "report beside train/", "embed into train/", "predict into parts"],
)
def test_no_command_writes_inside_a_dataset_folder_it_reads(
    argv, demo, tmp_path, workspace, capsys
):
    parts = tmp_path / "parts"
    assert main(["embed", str(demo), "--model", "baseline", "--out", f"{parts}/"]) == 0
    capsys.readouterr()
    before = {folder: sorted(folder.rglob("*")) for folder in (demo, parts)}
    argv = [part.format(demo=demo, parts=parts) for part in argv]
    error = run_refused(argv, capsys)
    assert "which the command reads, so what it writes would join the dataset" in error
    assert {folder: sorted(folder.rglob("*")) for folder in (demo, parts)} == before


@pytest.mark.parametrize("command", ["embed", "predict", "ensemble"])
def test_every_command_makes_the_out_folder(command, demo, demo_parquet, tmp_path, workspace):
    out = tmp_path / "new" / "deeper" / "out.file"
    sources = {
        "embed": [str(demo), "--model", "baseline"],
        "predict": [str(demo_parquet)],
        "ensemble": [str(demo_parquet)] * 2,
    }
    argv = [command, *sources[command], "--out", str(out)] + (
        ["--weights", "1", "1"] if command == "ensemble" else []
    )
    assert main(argv) == 0
    assert out.is_file()


def test_a_missing_dataset_is_refused_before_any_model_loads(
    tiny_clip_dir, workspace, capsys, monkeypatch
):
    import core.embedding.runner

    monkeypatch.setattr(
        core.embedding.runner, "load_embedder", lambda config: pytest.fail("the model loaded first")
    )
    assert main(["evaluate", "no/such/folder", "--model", str(tiny_clip_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
