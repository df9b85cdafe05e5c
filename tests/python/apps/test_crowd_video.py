"""Frames for crowd counting: videos written with PyAV and read back, image folders in natural
order, the synthetic drifting-crowd video, and one-line errors naming the path."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from codl.apps.crowd import Camera, render_scene
from codl.apps.crowd.video import (
    VIDEO_CODECS,
    VideoError,
    check_source,
    drifting_counts,
    frame_count,
    frames_to_read,
    image_files,
    read_frames,
    read_image,
    synthetic_video,
    write_video,
)

HEIGHT, WIDTH = 48, 64


def smooth_frames(count: int = 8) -> list[torch.Tensor]:
    """Gradients that change from frame to frame: what a lossy codec keeps well."""
    rows = torch.linspace(0.0, 1.0, HEIGHT)[:, None].expand(HEIGHT, WIDTH)
    columns = torch.linspace(0.0, 1.0, WIDTH)[None, :].expand(HEIGHT, WIDTH)
    return [
        torch.stack([0.1 + 0.8 * rows, columns * (0.4 + 0.07 * i), 0.5 * (rows + columns) * 0.9])
        for i in range(count)
    ]


def quantized(image: torch.Tensor) -> np.ndarray:
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


CODECS = [codec for codec in VIDEO_CODECS if codec in av.codecs_available]


@pytest.mark.parametrize("codec", CODECS)
def test_a_written_video_reads_back(tmp_path: Path, codec: str) -> None:
    written = smooth_frames(8)
    path = write_video(written, tmp_path / "clip.mp4", fps=10, codec=codec)
    assert path == tmp_path / "clip.mp4"
    assert frame_count(path) == 8
    frames = list(read_frames(path))
    assert [frame.index for frame in frames] == list(range(8))
    assert [frame.name for frame in frames] == [f"frame {i}" for i in range(8)]
    assert [frame.timestamp for frame in frames] == pytest.approx([i / 10 for i in range(8)])
    for frame, image in zip(frames, written, strict=True):
        assert frame.image.shape == (3, HEIGHT, WIDTH)
        assert frame.image.dtype == torch.float32
        assert float(frame.image.min()) >= 0.0 and float(frame.image.max()) <= 1.0
        assert float((frame.image - image).abs().mean()) < 0.05


def test_every_and_max_frames_pick_frames_of_a_video(tmp_path: Path) -> None:
    path = write_video(smooth_frames(8), tmp_path / "clip.mkv", fps=4)
    assert frame_count(path) == 8  # Matroska has no frame count: from its duration
    every_third = list(read_frames(path, every=3))
    assert [frame.index for frame in every_third] == [0, 3, 6]
    assert [frame.timestamp for frame in every_third] == pytest.approx([0.0, 0.75, 1.5])
    assert [frame.index for frame in read_frames(path, max_frames=5)] == [0, 1, 2, 3, 4]
    assert [frame.index for frame in read_frames(path, every=2, max_frames=3)] == [0, 2, 4]
    # The frames kept are the same pixels as those read one by one.
    all_frames = list(read_frames(path))
    assert torch.equal(every_third[1].image, all_frames[3].image)
    assert frames_to_read(8, every=3) == 3
    assert frames_to_read(8, every=2, max_frames=3) == 3
    assert frames_to_read(None, max_frames=3) == 3
    assert frames_to_read(None) is None
    with pytest.raises(ValueError, match="every"):
        read_frames(path, every=0)
    with pytest.raises(ValueError, match="max_frames"):
        read_frames(path, max_frames=0)


def test_an_image_folder_reads_back_exactly_in_natural_order(tmp_path: Path) -> None:
    images = smooth_frames(4)
    names = ["shot10.png", "shot2.png", "Shot1.bmp", "shot3.PNG"]  # natural order: 1, 2, 3, 10
    for name, image in zip(names, images, strict=True):
        Image.fromarray(quantized(image)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(quantized(images[0])).save(tmp_path / ".hidden.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(quantized(images[0])).save(tmp_path / "sub" / "0.png")

    assert [path.name for path in image_files(tmp_path)] == [
        "Shot1.bmp",
        "shot2.png",
        "shot3.PNG",
        "shot10.png",
    ]
    assert frame_count(tmp_path) == 4
    frames = list(read_frames(tmp_path))
    assert [frame.name for frame in frames] == ["Shot1.bmp", "shot2.png", "shot3.PNG", "shot10.png"]
    assert [frame.index for frame in frames] == [0, 1, 2, 3]
    assert all(frame.timestamp is None for frame in frames)
    by_name = dict(zip(names, images, strict=True))
    for frame in frames:
        expected = torch.from_numpy(quantized(by_name[frame.name])).permute(2, 0, 1) / 255.0
        assert frame.image.dtype == torch.float32
        assert torch.equal(frame.image, expected.to(torch.float32))
    assert [frame.name for frame in read_frames(tmp_path, every=2)] == ["Shot1.bmp", "shot3.PNG"]
    assert [frame.name for frame in read_frames(tmp_path, max_frames=1)] == ["Shot1.bmp"]


def test_grey_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgba = np.zeros((48, 64, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (3, 48, 64)
    for channel in range(3):
        assert torch.equal(image[channel], torch.from_numpy(grey).float() / 255.0)
    # A single image file is a source of one frame.
    (frame,) = read_frames(tmp_path / "rgba.png")
    assert frame.name == "rgba.png"
    assert float(frame.image[0].min()) == pytest.approx(200 / 255)
    assert float(frame.image[1:].max()) == 0.0
    assert frame_count(tmp_path / "rgba.png") == 1


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unreadable_sources_are_one_line_errors_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    with pytest.raises(VideoError) as error:
        read_frames(missing)
    assert str(missing) in one_line(error)
    assert frame_count(missing) is None

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(VideoError, match="no images") as error:
        read_frames(empty)
    assert str(empty) in one_line(error)
    with pytest.raises(VideoError):
        check_source(empty)

    corrupt = tmp_path / "x.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    for call in (read_frames, check_source):
        with pytest.raises(VideoError) as error:
            call(corrupt)
        assert str(corrupt) in one_line(error)
    assert frame_count(corrupt) is None

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(quantized(smooth_frames(1)[0])).save(broken / "1.png")
    (broken / "2.png").write_bytes(b"\x89PNG not really")
    frames = read_frames(broken)
    assert next(frames).name == "1.png"
    with pytest.raises(VideoError) as error:
        next(frames)
    assert str(broken / "2.png") in one_line(error)
    assert issubclass(VideoError, ValueError)


def test_write_video_refuses_what_it_cannot_encode(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with pytest.raises(VideoError, match="even height and width") as error:
        write_video([torch.rand(3, 47, 64)], path)
    assert str(path) in one_line(error)
    with pytest.raises(VideoError, match="no frames"):
        write_video([], path)
    with pytest.raises(VideoError, match="3 x H x W"):
        write_video([torch.rand(1, 48, 64)], path)
    with pytest.raises(VideoError, match="the first was 48 x 64"):
        write_video([torch.rand(3, 48, 64), torch.rand(3, 32, 64)], path)
    assert not path.exists()  # nothing half-written is left behind
    with pytest.raises(VideoError, match="no nosuchcodec encoder"):
        write_video([torch.rand(3, 48, 64)], path, codec="nosuchcodec")
    with pytest.raises(VideoError, match="cannot be written"):
        write_video([torch.rand(3, 48, 64)], tmp_path / "no" / "such" / "folder.mp4")


def test_drifting_counts_drift_slowly_within_bounds() -> None:
    counts = drifting_counts(200, min_count=5, max_count=20, step=2, seed=3)
    assert len(counts) == 200
    assert all(5 <= count <= 20 for count in counts)
    assert all(abs(b - a) <= 2 for a, b in itertools.pairwise(counts))
    assert len(set(counts)) > 5  # it moves
    assert counts == drifting_counts(200, min_count=5, max_count=20, step=2, seed=3)
    assert drifting_counts(3, min_count=7, max_count=7) == [7, 7, 7]
    with pytest.raises(ValueError):
        drifting_counts(0)


def test_synthetic_video_holds_the_counts_it_returns(tmp_path: Path) -> None:
    # No sensor noise (a codec cannot keep it) and frames large enough that 4:2:0 chroma keeps
    # most of the people's colours.
    camera = Camera(height=96, width=128, person_height=0.5, noise=0.0)
    path = tmp_path / "crowd.mp4"
    counts = synthetic_video(
        path, frames=6, camera=camera, seed=1, fps=6, min_count=3, max_count=30
    )
    assert counts == drifting_counts(6, min_count=3, max_count=30, step=2, seed=1)
    frames = list(read_frames(path))
    assert len(frames) == 6
    assert all(frame.image.shape == (3, 96, 128) for frame in frames)
    assert frames[-1].timestamp == pytest.approx(5 / 6)
    for index, (frame, count) in enumerate(zip(frames, counts, strict=True)):
        drawn = render_scene(count, camera, seed=1 * 1_000_003 + index).image
        assert float((frame.image - drawn).abs().mean()) < 0.04
    with pytest.raises(VideoError, match="even"):
        synthetic_video(tmp_path / "odd.mp4", frames=2, camera=Camera(height=47, width=64))
