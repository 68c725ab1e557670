"""The README's quick start runs as written: its shell commands, then its Python block (``examples/quickstart.py``)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SECTION = "## Quick start on your own images"


def quick_start_blocks() -> tuple[list[str], str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION) :].split("\n## ", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return [line for line in shell.splitlines() if line.strip()], python


def run(command: str, cwd: Path) -> str:
    """``command`` as the README writes it, with ``.venv/bin/`` this interpreter's and the checkout's examples."""
    bin_dir = Path(sys.executable).parent
    command = command.replace(".venv/bin/", f"{bin_dir}/").replace(" examples/", f" {ROOT}/examples/")
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, env=os.environ.copy(),
                          timeout=600)
    assert done.returncode == 0, (command, done.stderr[-2000:])
    return done.stdout


def test_the_quick_start_runs_as_written(tmp_path):
    shell, python = quick_start_blocks()
    assert (ROOT / "examples" / "quickstart.py").read_text().endswith(python)  # the file is the README's block
    out = [run(line, tmp_path) for line in shell]
    assert out[3].startswith("my_images/red-star/000.png: red-star")  # a trained class, on top
    assert "added new class 'yellow-circle'" in out[4]
    assert out[5].startswith("new_images/yellow-circle/039.png: yellow-circle")  # the class added on the device
    printed = run(".venv/bin/python examples/quickstart.py", tmp_path).splitlines()
    last, forgetting = map(float, printed[-3].split())
    assert last > 50.0 and abs(forgetting) < 20.0  # 20 classes: chance 5 %
    assert printed[-2].startswith("[[('red-star',") and printed[-1] == "['yellow-circle']"
