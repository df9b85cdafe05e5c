"""The ``codl`` command: ``codl info``, ``codl bench [NAME ...]``, ``codl bench PROGRAM
[options]``, ``codl demo``, ``codl compress``, ``codl inspect``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


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
        print("\n".join(bench.available()))
        return 0
    if args.dispatch:
        import codl

        codl.set_dispatch_level(args.dispatch)
    results = bench.run(
        args.names, size=args.size, repeat=args.repeat, threads=args.threads, progress=True
    )
    print(bench.format_table(results))
    path = bench.write_json(results, args.json)
    print(f"wrote {path}")
    return 0


def _run_bench_program(name: str, argv: Sequence[str]) -> int:
    from codl import bench

    try:
        return bench.run_program(name, argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"codl bench {name}: error: {error}", file=sys.stderr)
        return 2


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


def _read_state_dict(path: Path) -> dict[str, object]:
    """A state_dict from a .safetensors file or a .pt file (torch.load, weights_only=True)."""
    import torch

    from codl.formats.safetensors_io import read_safetensors

    if path.suffix == ".safetensors":
        return dict(read_safetensors(path))
    import pickle

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"{path}: not a state_dict torch.load(weights_only=True) reads: {error}"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a training checkpoint
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path}: expected a state_dict (a dict of tensors), found {type(loaded).__name__}"
        )
    return dict(loaded)


def _cmd_compress(args: argparse.Namespace) -> int:
    import codl
    from codl.formats import inspect

    state = _read_state_dict(args.input)
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

    infos, metadata = read_header(args.file)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codl",
        description="codl: co-design for deep learning on CPUs (kernels, optimizers, "
        "compression). Each subcommand has its own --help.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = sub.add_parser(
        "info",
        help="show the build, the CPU features and the kernels chosen",
        description="Show codl's version, compiler, ISAs built, CPU features "
        "detected, the dispatch level selected and the thread count.",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=_cmd_info)

    from codl.bench import programs

    bench = sub.add_parser(
        "bench",
        help="time codl against its torch baseline",
        description="Run micro-benchmarks: codl and its plain-torch baseline "
        "in the same process with the same threads; print a table (medians, interquartile "
        "ranges, load average) and write JSON with the ratios. Longer programs run as "
        "`codl bench PROGRAM [options]`, each with its own --help: " + ", ".join(programs()) + ".",
    )
    bench.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default all)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument(
        "--size",
        type=int,
        default=None,
        help="problem size: values per case for pack (default 16M), the weight's side for "
        "ternary (default 4096)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=7,
        help="timed blocks per side, at least (median and interquartile range)",
    )
    bench.add_argument("--threads", type=int, default=2, help="threads for both sides")
    bench.add_argument(
        "--dispatch",
        default=None,
        metavar="LEVEL",
        help="run codl's kernels at this level (scalar, avx2, avx512, sve)",
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
        description="Read a state_dict (.pt through torch.load(weights_only=True), or "
        ".safetensors) and write it as a .codl file. Without --prune/--bits every tensor is "
        "stored losslessly; with them, every weight of 2+ dimensions is magnitude-pruned and "
        "quantized, and the other tensors stay lossless.",
    )
    compress.add_argument(
        "input", type=Path, metavar="IN", help="a .pt state_dict or a .safetensors file"
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
    compress.add_argument("--level", type=int, default=9, help="DEFLATE level, 0-12 (default 9)")
    compress.set_defaults(run=_cmd_compress)

    inspect = sub.add_parser(
        "inspect",
        help="show what a .codl file holds, tensor by tensor",
        description="Print a table of a .codl file's tensors (shape, encoding, sparsity, bits, "
        "bytes before and after, ratio) and the totals; only the header is read.",
    )
    inspect.add_argument("file", type=Path, metavar="FILE.codl")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(run=_cmd_inspect)

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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) >= 2 and arguments[0] == "bench":
        from codl.bench import programs

        # A program parses its own options, which the micro-benchmarks' parser would refuse.
        if arguments[1] in programs():
            return _run_bench_program(arguments[1], arguments[2:])
    args = build_parser().parse_args(arguments)
    try:
        return int(args.run(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"codl {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
