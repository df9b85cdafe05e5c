"""The reduced crowd pipeline end to end, and its report checked against the run's artifacts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from codl import cli
from codl.apps.crowd import count_errors, load_teacher
from codl.apps.crowd.pipeline import RunConfig, run_pipeline, stack_frames
from codl.apps.crowd.report import RunFolderError, report_figures, write_report
from codl.apps.crowd.student import CrowdStudent, load_student
from codl.apps.crowd.teacher import Normalized
from codl.formats import load_into
from codl.models import CSRNet


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crowd-run")
    run_pipeline(folder, RunConfig.small(), progress=False)
    return folder


@pytest.mark.slow
def test_the_run_writes_every_artifact(run: Path) -> None:
    for name in (
        "config.json",
        "adaptation.json",
        "distillation.json",
        "speed.json",
        "communication.json",
        "scene_change.json",
        "teacher_adapted.codl",
        "student.codl",
        "student_float.codl",
        "student_new_scene.codl",
    ):
        assert (run / name).is_file(), name
    adaptation = json.loads((run / "adaptation.json").read_text())
    assert set(adaptation["runs"]) == {"kfac", "sgd", "adam"}
    speed = json.loads((run / "speed.json").read_text())["counters"]
    assert {"teacher_fp32_torch", "student_fp32_torch", "student_codl"} <= set(speed)
    assert all(entry["fps"] > 0 for entry in speed.values())


@pytest.mark.slow
def test_the_reports_figures_are_the_artifacts(run: Path) -> None:
    figures = report_figures(run)
    config = RunConfig.small()
    assert figures.sizes["student_codl"] == (run / "student.codl").stat().st_size
    assert figures.sizes["teacher_float32"] == 4 * 16_263_489
    assert figures.parameters["student"] == sum(p.numel() for p in CrowdStudent().parameters())
    # The errors are those of the saved models on the regenerated held-out frames.
    frames, truth = stack_frames(config.data("test"))
    student = load_student(run / "student.codl")
    teacher = CSRNet()
    load_into(teacher, run / "teacher_adapted.codl")
    with torch.no_grad():
        student_maps = student(frames)
        teacher_maps = Normalized(teacher)(frames)
        pretrained_maps = Normalized(load_teacher())(frames)
    assert figures.errors["student"]["mae"] == pytest.approx(count_errors(student_maps, truth)[0])
    assert figures.errors["teacher_adapted"]["mae"] == pytest.approx(
        count_errors(teacher_maps, truth)[0]
    )
    assert figures.errors["teacher_pretrained"]["mae"] == pytest.approx(
        count_errors(pretrained_maps, truth)[0]
    )
    assert figures.errors["student_vs_teacher"]["mae"] == pytest.approx(
        count_errors(student_maps, teacher_maps)[0]
    )
    # The table's cells are ratios of those figures.
    table = figures.table
    assert table["total"]["memory"].value == pytest.approx(
        figures.sizes["student_codl"] / figures.sizes["teacher_float32"]
    )
    fps = json.loads((run / "speed.json").read_text())["counters"]
    assert table["downsizing"]["speed"].value == pytest.approx(
        fps["student_codl"]["fps"] / fps["student_fp32_torch"]["fps"]
    )
    assert table["parallelization"]["speed"].kind == "projected"
    speeds = [table[row]["speed"].value for row in table if row != "total"]
    assert table["total"]["speed"].value == pytest.approx(
        math.prod(v for v in speeds if v is not None)
    )
    scene = figures.scene
    assert scene["before_mae"] == figures.errors["scene_student_before"]["mae"]


@pytest.mark.slow
def test_the_report_is_written_with_its_plots(run: Path) -> None:
    path = write_report(run)
    text = path.read_text()
    assert "| total |" in text and "## Goals" in text
    for plot in ("adaptation.png", "counts.png", "example.png", "scaling.png", "scene_change.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({plot})" in text


def test_a_folder_that_is_no_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=r"config\.json: missing"):
        report_figures(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        report_figures(tmp_path)


@pytest.mark.slow
def test_codl_report_prints_the_table_and_codl_count_runs_the_student(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| total |" in out and f"wrote {run / 'report.md'}" in out
    folder = tmp_path / "frames"
    folder.mkdir()
    frames, _ = stack_frames(RunConfig.small().data("test"))
    student = load_student(run / "student.codl")
    for index, frame in enumerate(frames[:2]):
        Image.fromarray((frame.permute(1, 2, 0) * 255).round().byte().numpy()).save(
            folder / f"f{index}.png"
        )
    out_dir = tmp_path / "counted"
    code = cli.main(
        ["count", str(folder), "--model", str(run / "student.codl"), "--out", str(out_dir)]
    )
    assert code == 0
    rows = (out_dir / "counts.csv").read_text().splitlines()[1:]
    with torch.no_grad():
        for row, frame in zip(rows, frames[:2], strict=True):
            pixels = (frame * 255).round() / 255  # what the PNG holds
            expected = float(student(pixels[None]).sum())
            assert float(row.split(",")[-1]) == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_codl_report_on_a_folder_that_is_no_run_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codl report: error:") and "config.json" in err and "\n" not in err
