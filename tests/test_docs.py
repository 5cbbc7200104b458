"""The README and the guides in docs/ run as written: each file's code blocks, in order, in one fresh Python process
whose working directory is an empty tmp folder outside the checkout.

The process runs with `python -I` (no PYTHONPATH, no user site, neither the checkout nor the runner's folder on
`sys.path`) and executes the blocks in a fresh namespace: a block sees only the imports it and the file's earlier
blocks show, and the package only as installed.

Which blocks run, by the fence's info string: every ```python and ```bash block (bash with -euo pipefail), unless
its info string names why it cannot run here with one of `SKIP_MARKERS`:
- `gpu`: it needs a CUDA GPU;
- `hub`: it needs the Hugging Face Hub (downloads, uploads, a Hub repository);
- `data`: it needs data or a checkpoint that the guide does not make (LRS3, a released .pth, placeholder paths);
- `long`: it runs longer than this test allows (the main job, a full training);
- `install`: it changes the environment (pip, apt).
e.g. ```bash gpu or ```python hub. Any other word after the language fails the test, so that no block is left out
without saying why. Other languages (```yaml, ```text, ...) are not code to run.
A failure names the file and the line: blocks are compiled with the file's path and their own line numbers. The
files run two at a time (each in its own process, single-threaded), started together on first use.
"""

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# guides that must hold runnable code (a renamed or emptied guide fails here rather than silently running nothing)
RUNNABLE_GUIDES = (
    "README",
    "architecture",
    "datasets",
    "feature_extraction",
    "fusion",
    "inference",
    "mouth_cropping",
    "qlora",
    "transcribe",
)
TIMEOUT = 600
RUN_LANGUAGES = ("python", "bash")
SKIP_MARKERS = ("gpu", "hub", "data", "long", "install")
PARALLEL_GUIDES = min(2, os.cpu_count() or 1)

RUNNER = """
import json, subprocess, sys, time
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for block in blocks:
    start = time.perf_counter()
    if block["language"] == "python":
        # padded with newlines: tracebacks show the guide's own file and line
        code = compile("\\n" * (block["line"] - 1) + block["code"], block["path"], "exec")
        exec(code, namespace)
    else:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block["code"]])
        if result.returncode:
            sys.exit(f"{block['path']}, line {block['line']}: the bash block exited with {result.returncode}")
    print(f"[docs] {block['path']}:{block['line']} ran in {time.perf_counter() - start:.1f} s", flush=True)
"""


def code_blocks(path: Path) -> list[dict]:
    """The blocks of a Markdown file that run: `{"language", "line" (of the block's first code line), "code",
    "path"}`, in order."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        words = match.group("info").split()
        language, flags = (words[0], words[1:]) if words else ("", [])
        if language in RUN_LANGUAGES and not set(flags) & set(SKIP_MARKERS):
            line = text.count("\n", 0, match.start("code")) + 1
            blocks.append({"language": language, "line": line, "code": match.group("code"), "path": str(path)})
    return blocks


def unexplained_flags(path: Path) -> list[str]:
    """`file:line: info` of each python/bash block whose info string holds a word that is not a skip marker."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        words = match.group("info").split()
        if words and words[0] in RUN_LANGUAGES and set(words[1:]) - set(SKIP_MARKERS):
            found.append(f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}: {match.group('info').strip()}")
    return found


def run_guide(path: Path, folder: Path) -> subprocess.CompletedProcess:
    """Run a guide's blocks in `folder` (empty, outside the checkout) in a fresh Python process; returns the finished
    process."""
    assert not folder.resolve().is_relative_to(REPO), f"{folder} is inside the checkout"
    folder.mkdir(parents=True, exist_ok=True)
    blocks_file, runner = folder.parent / f"{path.stem}_blocks.json", folder.parent / f"{path.stem}_runner.py"
    blocks_file.write_text(json.dumps(code_blocks(path)))
    runner.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # no PYTHONPATH, PYTHONSTARTUP, ...
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` is this one
    )
    return subprocess.run(
        [sys.executable, "-I", str(runner), str(blocks_file)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


ALL_GUIDES = (REPO / "README.md", *sorted(DOCS.glob("*.md")))
GUIDES = [path for path in ALL_GUIDES if code_blocks(path)]


def test_every_block_left_out_says_why():
    assert [flag for path in ALL_GUIDES for flag in unexplained_flags(path)] == []


def test_the_runnable_guides_are_found():
    assert {path.stem for path in GUIDES} >= set(RUNNABLE_GUIDES)


def test_block_selection_and_error_locations(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text(
        "# A guide\n\n```python\nx = 1\n```\n\n```python gpu\nimport cuda_only\n```\n\n"
        "```bash install\npip install something\n```\n\n```bash\necho $((1 + 1)) > two.txt\n```\n\n"
        "Then:\n\n```python\nassert open('two.txt').read() == '2\\n'\n\n\nraise RuntimeError(x)\n```\n\n"
        "```yaml\nnot: code\n```\n"
    )
    blocks = code_blocks(guide)
    assert [(b["language"], b["line"]) for b in blocks] == [("python", 4), ("bash", 16), ("python", 22)]
    assert unexplained_flags(guide) == []
    (tmp_path / "vague.md").write_text("```bash no-run\nexit 1\n```\n\n```python hub\nimport x\n```\n")
    assert unexplained_flags(tmp_path / "vague.md") == ["vague.md:1: bash no-run"]
    result = run_guide(guide, tmp_path / "run")
    # the bash block ran before the last Python block, which fails at its own line of the guide
    assert result.returncode != 0
    assert f'File "{guide}", line 25' in result.stderr and "RuntimeError: 1" in result.stderr


def timed_run(path: Path, folder: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = run_guide(path, folder)
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def guide_runs(tmp_path_factory):
    """Every guide's run, started at once on a pool of PARALLEL_GUIDES workers: {path: future of (result, s)}."""
    root = tmp_path_factory.mktemp("guides")
    with ThreadPoolExecutor(max_workers=PARALLEL_GUIDES) as pool:
        yield {path: pool.submit(timed_run, path, root / path.stem / "work") for path in GUIDES}


@pytest.mark.parametrize("guide", GUIDES, ids=[path.stem for path in GUIDES])
def test_guide_runs(guide, guide_runs):
    result, elapsed = guide_runs[guide].result()
    output = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"{guide.name} failed after {elapsed:.0f} s:\n{output}"
    print(f"{guide.name}: {elapsed:.1f} s")
