"""Every code block of README.md runs as written.

The blocks run in the order they appear, in one temporary directory (so a block
may use the files an earlier one wrote, as a reader following the README would):
```bash blocks with bash -e, ```python blocks each in a fresh interpreter, both
with this environment's ``distmix`` command first on PATH. A block that must not
run here (installing, a remote scheduler) is preceded by an HTML comment that
says why, which the README does not render:

    <!-- not-run: needs a Dask scheduler at tcp://scheduler:8786 -->

Any other block, or a block in another language, fails the test, so a new block
is either runnable or says why not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = ("bash", "python")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
#: seconds for one block; the whole README takes well under a minute on 2 cores
BLOCK_TIMEOUT = 180


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason, for a block marked not-run

    def __str__(self) -> str:
        return f"README.md:{self.line} ```{self.lang}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text``, each with the not-run reason before it, if any."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 1}: a code block that is never closed")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(
            Block(
                line=i + 1,
                lang=opening["lang"],
                code="\n".join(lines[i + 1 : end]) + "\n",
                not_run=marker["reason"] if marker else None,
            )
        )
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_every_block_runs_or_says_why_not():
    assert BLOCKS, "no code blocks found in README.md"
    for block in BLOCKS:
        if block.not_run is not None:
            assert block.not_run, f"{block}: a not-run marker needs a reason"
        else:
            assert block.lang in RUNNABLE, (
                f"{block}: only {', '.join(RUNNABLE)} blocks are run; mark it "
                "<!-- not-run: why --> on the line before, or make it one of those"
            )


def test_the_parser_sees_markers_and_languages():
    text = "a\n\n<!-- not-run: remote -->\n```bash\necho hi\n```\n\n```python\nx = 1\n```\n"
    assert readme_blocks(text) == [
        Block(4, "bash", "echo hi\n", "remote"),
        Block(8, "python", "x = 1\n", None),
    ]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # `distmix` and `python` of this environment, as after activating it
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.slow
def test_readme_blocks_run_as_written(tmp_path):
    env = _environment()
    ran = []
    for index, block in enumerate(BLOCKS):
        if block.not_run is not None:
            continue
        if block.lang == "bash":
            command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
        else:
            script = tmp_path / f"readme_block_{index}.py"
            script.write_text(block.code, encoding="utf-8")
            command = [sys.executable, str(script)]
        start = time.perf_counter()
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
        ran.append(f"{block}: {time.perf_counter() - start:.1f}s")
        assert result.returncode == 0, (
            f"{block} failed (exit {result.returncode}):\n{block.code}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
        )
    assert ran, "README.md has no block that runs"
    print("\n".join(ran))
