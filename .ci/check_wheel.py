"""Run from outside the source tree with only the built wheel on sys.path: it must import,
pick a kernel level, run a kernel and find its shipped data."""

import importlib
from pathlib import Path

import torch

import codl
import codl.kernels

info = codl.info()
assert codl.__file__ is not None and "codl-wheel-check" in codl.__file__, codl.__file__
x = torch.randn(1000)
assert torch.equal(
    codl.kernels.unpack_signs(codl.kernels.pack_signs(x), 1000),
    torch.where(torch.signbit(x), -1.0, 1.0),
)
subset = importlib.import_module("codl.data.fashion_mnist").SUBSET_DIR
images, labels = codl.data.fashion_mnist("test", root=subset)
assert images.shape == (1000, 28, 28) and labels.shape == (1000,)
print(f"wheel ok: codl {info['version']} from {codl.__file__}, dispatch {info['dispatch']}")

# auditwheel bundled libdeflate into codl.libs: the extension must load that copy, not the
# system's (zlib stays external: libz.so.1 is on the manylinux policy's list of system libraries).
mapped = Path("/proc/self/maps").read_text().splitlines()
deflate = {line.split()[-1] for line in mapped if "libdeflate" in line}
assert deflate and all("/codl.libs/" in path for path in deflate), deflate
print(f"libdeflate loaded from the wheel: {sorted(deflate)}")
