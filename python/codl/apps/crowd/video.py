"""Frames to count: a video file (decoded with PyAV, FFmpeg's bindings) or a folder of images,
read one frame at a time, as float32 3 x H x W tensors in [0, 1] like :func:`render_scene`'s.

Nothing is loaded whole: a camera's hour of video does not fit in memory, and a counter needs one
batch of frames at a time. Every failure to read (a missing path, a folder without images, a file
FFmpeg cannot decode, an image Pillow cannot open) is a :class:`VideoError` of one line naming
the path, so that ``codl count`` can report it as such.

:func:`write_video` and :func:`synthetic_video` go the other way: short videos with known
content, for the tests and to try ``codl count`` without a camera.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from codl.apps.crowd.scenes import Camera, render_scene

#: The image files a folder source is made of (compared in lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: Encoders :func:`write_video` tries, in order: H.264 if this FFmpeg has it, else MPEG-4 part 2
#: (always built into FFmpeg).
VIDEO_CODECS = ("libx264", "mpeg4")


class VideoError(ValueError):
    """A source of frames that cannot be read (or a video that cannot be written); the message is
    one line and names the path."""


@dataclass(frozen=True)
class Frame:
    """One frame of a source: ``index`` its position in the source (0-based, counting the
    frames skipped by ``every``), ``name`` the image's file name or ``"frame {index}"``,
    ``timestamp`` its presentation time in seconds (video; None for images or when the stream
    has none) and ``image`` (3 x H x W, float32 in [0, 1], RGB)."""

    index: int
    name: str
    timestamp: float | None
    image: torch.Tensor


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    # "frame2.png" before "frame10.png": digit runs compare as numbers, the rest case-folded.
    return [
        (0, int(part)) if part.isdigit() else (1, part.casefold())
        for part in re.split(r"(\d+)", name)
        if part
    ]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` (not its subfolders; hidden files left out) in natural
    order: ``2.png`` before ``10.png``. Raises :class:`VideoError` when there is none."""
    folder = Path(folder)
    files = [
        path
        for path in folder.iterdir()
        if _is_image(path) and not path.name.startswith(".") and path.is_file()
    ]
    if not files:
        raise VideoError(
            f"{folder}: a folder with no images (expected {', '.join(IMAGE_SUFFIXES)} files)"
        )
    return sorted(files, key=lambda path: _natural_key(path.name))


def _checked(source: str | Path) -> Path:
    path = Path(source)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    return path


def check_source(source: str | Path) -> Path:
    """``source`` as a path once it is known to be readable by :func:`read_frames`: it exists;
    a folder holds images; a video opens and has a video stream (its frames are not decoded, so
    damage further in shows only while reading). Raises :class:`VideoError` naming it."""
    path = _checked(source)
    if path.is_dir():
        image_files(path)
    elif not _is_image(path):
        _open_video(path).close()
    return path


def _ffmpeg_reason(error: Exception) -> str:
    # PyAV's messages end with the path again ("...: '/x.mp4'"): keep the reason only.
    reason = getattr(error, "strerror", None) or str(error)
    return str(reason).splitlines()[0] if str(reason).strip() else type(error).__name__


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError) as error:
        raise VideoError(f"{path}: not a video FFmpeg can read ({_ffmpeg_reason(error)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: holds no video stream")
    return container


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 RGB to 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(array).permute(2, 0, 1).to(torch.float32).div_(255.0).contiguous()


def read_image(path: str | Path) -> torch.Tensor:
    """The image at ``path`` (any format Pillow reads, converted to RGB) as 3 x H x W float32 in
    [0, 1]. Raises :class:`VideoError` when it cannot be read."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # writable: torch.from_numpy wants it
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise VideoError(f"{path}: not an image Pillow can read ({error})") from None
    return _to_tensor(array)


def _check_stride(every: int, max_frames: int | None) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1
    ):
        raise ValueError(f"max_frames must be None or an int >= 1, got {max_frames!r}")


def read_frames(
    source: str | Path, *, every: int = 1, max_frames: int | None = None
) -> Iterator[Frame]:
    """The frames of ``source``, one at a time: a video file (its first video stream, decoded
    with PyAV and converted to RGB), a folder of images (``.jpg``, ``.jpeg``, ``.png``,
    ``.bmp``, in natural order, see :func:`image_files`) or a single image file.

    ``every``: keep one frame in ``every`` (frames 0, every, 2 * every...; a video's skipped
    frames are still decoded, as a codec needs, but not converted); ``max_frames``: stop after
    that many frames are kept. The path is checked, and a video opened, when this is called;
    decoding errors further on are raised by the iterator. Every error is a
    :class:`VideoError` naming the path (``ValueError`` for a bad ``every`` or ``max_frames``).
    """
    _check_stride(every, max_frames)
    path = _checked(source)
    if path.is_dir():
        return _image_frames(image_files(path), every, max_frames)
    if _is_image(path):
        return _image_frames([path], every, max_frames)
    return _video_frames(path, _open_video(path), every, max_frames)


def _image_frames(files: list[Path], every: int, max_frames: int | None) -> Iterator[Frame]:
    indices = range(0, len(files), every)[:max_frames]
    for index in indices:
        yield Frame(index, files[index].name, None, read_image(files[index]))


def _video_frames(
    path: Path, container: av.container.InputContainer, every: int, max_frames: int | None
) -> Iterator[Frame]:
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding where the codec can
        kept = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % every:
                    continue
                image = _to_tensor(frame.to_ndarray(format="rgb24"))
                yield Frame(index, f"frame {index}", frame.time, image)
                kept += 1
                if kept == max_frames:
                    return
        except (av.FFmpegError, OSError) as error:
            raise VideoError(
                f"{path}: decoding failed after {kept} frames ({_ffmpeg_reason(error)})"
            ) from None
    if kept == 0:
        raise VideoError(f"{path}: no frame could be decoded")


def frame_count(source: str | Path) -> int | None:
    """How many frames ``source`` holds, for a progress bar: the images of a folder, or what a
    video's container says (its frame count, else its duration times its frame rate, rounded).
    None when unknown or unreadable (:func:`read_frames` then says why)."""
    try:
        path = Path(source)
        if path.is_dir():
            return len(image_files(path))
        if _is_image(path):
            return 1 if path.is_file() else None
        with _open_video(path) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration is not None and stream.time_base is not None and rate:
                return round(float(stream.duration * stream.time_base * rate))
            if container.duration is not None and rate:
                return round(float(container.duration) / av.time_base * float(rate))
    except (VideoError, OSError):
        return None
    return None


def frames_to_read(
    total: int | None, *, every: int = 1, max_frames: int | None = None
) -> int | None:
    """How many frames :func:`read_frames` keeps from a source of ``total`` frames (None when
    both are unknown)."""
    kept = None if total is None else math.ceil(total / every)
    if max_frames is None:
        return kept
    return max_frames if kept is None else min(kept, max_frames)


def _encoder(path: Path, codec: str | None) -> str:
    for name in VIDEO_CODECS if codec is None else (codec,):
        if name in av.codecs_available:
            try:
                av.Codec(name, "w")
            except (av.FFmpegError, ValueError):
                continue
            return name
    wanted = ", ".join(VIDEO_CODECS) if codec is None else codec
    raise VideoError(f"{path}: this PyAV's FFmpeg has no {wanted} encoder")


def _to_uint8(image: torch.Tensor, path: Path, index: int) -> np.ndarray:
    if image.dim() != 3 or image.shape[0] != 3:
        raise VideoError(
            f"{path}: frame {index} has shape {tuple(image.shape)}, expected 3 x H x W"
        )
    pixels = image.detach().to(torch.float32).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().numpy()


def write_video(
    frames: Iterable[torch.Tensor],
    path: str | Path,
    *,
    fps: float = 25.0,
    quality: int = 18,
    codec: str | None = None,
) -> Path:
    """Encodes ``frames`` (each 3 x H x W in [0, 1], all of one size) as the video ``path``
    (its container from the suffix: ``.mp4``, ``.mkv``, ``.avi``...) at ``fps`` frames per
    second and returns ``path``.

    ``codec``: None for H.264 (libx264) where this PyAV's FFmpeg has it, else MPEG-4 part 2
    (``mpeg4``, always built in); or either by name. ``quality``: libx264's constant rate factor
    (0 best to 51 smallest; 18 looks like the input), for mpeg4 the matching fixed quantizer (about
    ``quality / 6``). Pixels are stored as YUV 4:2:0, which needs an even height and width.

    Raises :class:`VideoError` naming ``path`` for no frames, a frame of another shape or size,
    an odd size, or a file FFmpeg cannot write; nothing is left at ``path`` then."""
    path = Path(path)
    if not fps > 0:
        raise VideoError(f"{path}: fps must be > 0, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise VideoError(f"{path}: no frames to write")
    pixels = _to_uint8(first, path, 0)
    height, width = pixels.shape[:2]
    if height % 2 or width % 2:
        raise VideoError(
            f"{path}: frames of {height} x {width} pixels: YUV 4:2:0 video needs an even height "
            "and width (crop or pad a row or column)"
        )
    name = _encoder(path, codec)
    try:
        container = av.open(str(path), mode="w")
    except (av.FFmpegError, OSError) as error:
        raise VideoError(f"{path}: cannot be written ({_ffmpeg_reason(error)})") from None
    try:
        with container:
            stream = container.add_stream(name, rate=rate)
            assert isinstance(stream, av.VideoStream)  # an encoder of video, by _encoder
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if name == "libx264":
                stream.options = {"crf": str(quality), "preset": "veryfast"}
            else:
                # A fixed quantizer (FFmpeg's -qscale): with no per-frame quality given, the
                # encoder takes qmin, so qmin = qmax pins it.
                scale = max(2, min(31, round(quality / 6)))
                stream.codec_context.qscale = True
                stream.codec_context.qmin = stream.codec_context.qmax = scale
            index = 0
            while True:
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
                image = next(iterator, None)
                if image is None:
                    break
                index += 1
                pixels = _to_uint8(image, path, index)
                if pixels.shape[:2] != (height, width):
                    raise VideoError(
                        f"{path}: frame {index} is {pixels.shape[0]} x {pixels.shape[1]}, the "
                        f"first was {height} x {width}"
                    )
            for packet in stream.encode():
                container.mux(packet)
    except BaseException as error:
        path.unlink(missing_ok=True)
        if isinstance(error, (av.FFmpegError, OSError)):
            raise VideoError(f"{path}: cannot be written ({_ffmpeg_reason(error)})") from None
        raise
    return path


def drifting_counts(
    frames: int, *, min_count: int = 10, max_count: int = 60, step: int = 2, seed: int = 0
) -> list[int]:
    """``frames`` crowd sizes that drift slowly: a random walk from a uniform start in
    [``min_count``, ``max_count``], moving at most ``step`` people a frame, reflected at the
    bounds (people come and go, a crowd does not jump)."""
    if frames < 1 or not 0 <= min_count <= max_count or step < 0:
        raise ValueError(
            f"need frames >= 1, 0 <= min_count <= max_count and step >= 0, got {frames}, "
            f"{min_count}, {max_count}, {step}"
        )
    generator = torch.Generator().manual_seed(seed)
    count = int(torch.randint(min_count, max_count + 1, (), generator=generator))
    counts = [count]
    for _ in range(frames - 1):
        count += int(torch.randint(-step, step + 1, (), generator=generator))
        if count < min_count:
            count = min(2 * min_count - count, max_count)
        elif count > max_count:
            count = max(2 * max_count - count, min_count)
        counts.append(count)
    return counts


def synthetic_video(
    path: str | Path,
    frames: int = 24,
    camera: Camera | None = None,
    seed: int = 0,
    *,
    fps: float = 12.0,
    min_count: int = 10,
    max_count: int = 60,
    step: int = 2,
) -> list[int]:
    """Writes a short video of one camera's synthetic scene whose crowd drifts slowly
    (:func:`drifting_counts`; each frame drawn by :func:`render_scene`, the camera's background
    kept) to ``path`` with :func:`write_video`, and returns the true count of every frame.

    People are redrawn each frame (the scenes have no motion model): a test of counting, not of
    tracking. The camera's height and width must be even (the default, 240 x 320, is)."""
    counts = drifting_counts(frames, min_count=min_count, max_count=max_count, step=step, seed=seed)
    camera = camera or Camera()
    images = (
        render_scene(count, camera, seed=seed * 1_000_003 + index).image
        for index, count in enumerate(counts)
    )
    write_video(images, path, fps=fps)
    return counts
