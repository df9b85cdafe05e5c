"""The README's Use block runs as written: extracted from README.md and run, nothing filled in.

A new user copies that block first; issue 14 found it failing (uint8 images given to PGD and to
the search, a hint path that fits no shipped model, names it never defined). The block defines
everything it uses and keeps its runs small (its comments give the full-size calls), so this
test runs its text unchanged, in a fresh interpreter and a scratch directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def use_block(text: str) -> str:
    """The first ```python block of the README's "## Use" section."""
    section = text.split("\n## Use\n", 1)
    assert len(section) == 2, "README.md has no '## Use' section"
    body = section[1].split("\n## ", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", body, flags=re.DOTALL | re.MULTILINE)
    assert match is not None, "the Use section has no ```python block"
    return match.group(1)


def test_use_block_is_extracted_whole() -> None:
    block = use_block(README.read_text(encoding="utf-8"))
    assert block.startswith("import torch, codl\n")
    compile(block, "README.md", "exec")  # the whole block, not a fragment, parses
    # what issue 14 found broken is in the block that runs
    calls = ('fashion_mnist("test", normalize=True)', "compression_plan(", "pgd(", "HintLoss(")
    for call in calls:
        assert call in block


@pytest.mark.slow
def test_use_block_runs_as_written(tmp_path: Path) -> None:
    block = use_block(README.read_text(encoding="utf-8"))
    script = tmp_path / "use.py"
    script.write_text(block, encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # it did what its lines say: the C export, the two .codl files, the printed accuracies
    assert (tmp_path / "out" / "codl_model.c").is_file()
    for name in ("model.codl", "searched.codl"):
        assert (tmp_path / name).stat().st_size > 0
    accuracies = re.findall(r"(test|PGD) accuracy: ([0-9.]+) %", done.stdout)
    assert [kind for kind, _ in accuracies] == ["test", "PGD"], done.stdout[-2000:]
    assert all(0.0 <= float(value) <= 100.0 for _, value in accuracies)
