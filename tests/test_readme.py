"""README.md's code blocks run as written (issue 20, part 3, item 3).

Every fenced block says its language. ```python and ```bash blocks run, in README order, in one
folder that holds what `dlsn demo` writes (`runs/demo`, made by a short demo run with a smaller
model, so the commands there run in seconds); a block that cannot run here (the install, the
minutes-long demo, training on DIV2K, downloaded weights) carries the line
`<!-- readme-test: skip: REASON -->` right above it, and its reason is checked to be there.
```text blocks (usage synopses, the tree) are not code.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dlsn.sr.config import packaged_names

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = ("python", "bash")
SKIP = re.compile(r"<!-- readme-test: skip: (.+?) -->\s*$")


def readme_blocks():
    """`(line number, language, code, skip reason or None)` of every fenced block of README.md."""
    lines = README.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[index])
        if not fence:
            index += 1
            continue
        start = index
        index += 1
        while not lines[index].startswith("```"):
            index += 1
        skip = SKIP.match(lines[start - 1]) if start else None
        blocks.append((start + 1, fence.group(1), "\n".join(lines[start + 1:index]), skip and skip.group(1)))
        index += 1
    return blocks


def test_every_block_says_its_language_and_why_it_does_not_run():
    blocks = readme_blocks()
    assert len(blocks) >= 8
    for line, language, code, skip in blocks:
        assert language in RUNNABLE + ("text",), f"README.md:{line}: block without a known language ({language!r})"
        if language == "text":
            assert skip is None, f"README.md:{line}: a text block is never run; drop the skip line"
    assert sum(1 for _, language, _, skip in blocks if language in RUNNABLE and skip is None) >= 4


def test_readme_lists_every_packaged_config():
    text = README.read_text()
    missing = [name for name in packaged_names() if f"`{name}`" not in text]
    assert not missing, missing


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """A folder where `dlsn demo` has run (a shorter run of a smaller model than the default)."""
    pytest.importorskip("skimage")
    folder = tmp_path_factory.mktemp("readme")
    result = subprocess.run([sys.executable, "-m", "dlsn", "demo", "--iters", "1", "--device", "cpu",
                             "model.n_feats=8", "data.batch_size=2", "log.progress=false"],
                            cwd=folder, env=_environment(), capture_output=True, text=True, timeout=900)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]  # 1: the gain target
    assert (folder / "runs" / "demo" / "model.pt").is_file()
    return folder


def _environment():
    """The test's interpreter first on PATH (its `dlsn` script) and Triton's CPU interpreter."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TRITON_INTERPRET", "1")
    return env


_RUN = [block for block in readme_blocks() if block[1] in RUNNABLE and block[3] is None]


@pytest.mark.parametrize("line, language, code", [block[:3] for block in _RUN],
                         ids=[f"README.md:{block[0]}" for block in _RUN])
def test_readme_block_runs(demo_folder, line, language, code):
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=demo_folder, env=_environment(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"README.md:{line}\n{code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
