"""The README's quick start runs as written (its shell commands, then its Python block, ``examples/quickstart.py``),
and so do its runtime snippet and the pipeline block of docs/cli.md on the quick start's images; the README's
links lead to files that exist."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SECTION = "## Quick start on your own images"


def block(heading: str, language: str, page: str = "README.md") -> str:
    """The first ``language`` code block of the section ``heading`` of ``page`` (README.md or a docs page)."""
    readme = (ROOT / page).read_text()
    section = readme[readme.index(heading) :].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def lines(shell: str) -> list[str]:
    return [line for line in shell.splitlines() if line.strip()]


def run(command: str, cwd: Path) -> str:
    """``command`` as the README writes it, with ``.venv/bin/`` this interpreter's and the checkout's examples."""
    bin_dir = Path(sys.executable).parent
    command = command.replace(".venv/bin/", f"{bin_dir}/").replace(" examples/", f" {ROOT}/examples/")
    command = re.sub(r"^edgecl ", f"{bin_dir}/edgecl ", command)  # a line of the activated venv
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, env=os.environ.copy(),
                          timeout=600)
    assert done.returncode == 0, (command, done.stderr[-2000:])
    return done.stdout


def test_the_quick_start_and_the_pipeline_run_as_written(tmp_path):
    shell, python = lines(block(SECTION, "bash")), block(SECTION, "python")
    assert (ROOT / "examples" / "quickstart.py").read_text().endswith(python)  # the file is the README's block
    out = [run(line, tmp_path) for line in shell]
    assert out[3].startswith("my_images/red-star/000.png: red-star")  # a trained class, on top
    assert "unknown score nearest_cosine: AUROC" in out[4]  # 80 shapes classes the bundle never saw
    assert "added new class 'yellow-circle'" in out[5]
    assert out[6].startswith("new_images/yellow-circle/039.png: yellow-circle")  # the class added on the device
    printed = run(".venv/bin/python examples/quickstart.py", tmp_path).splitlines()
    last, forgetting = map(float, printed[-3].split())
    assert last > 50.0 and abs(forgetting) < 20.0  # 20 classes: chance 5 %
    assert printed[-2].startswith("[[('red-star',") and printed[-1] == "['yellow-circle']"
    pipeline = lines(block("## Pipeline", "bash", "docs/cli.md"))
    assert pipeline[0].startswith(". .venv/bin/activate")
    out = {line.split("#")[0].strip(): run(line, tmp_path) for line in pipeline[1:]}
    assert out["edgecl predict bundles/simplecil my_images/red-star/000.png --top-k 3"].startswith(
        "my_images/red-star/000.png: red-star")
    assert "'grinning face'" in out['edgecl add-class bundles/clip "grinning face" --by-name']
    (tmp_path / "runtime.py").write_text(block("### Runtime", "python"))
    assert run(".venv/bin/python runtime.py", tmp_path).startswith("['red-star']")


def test_the_readme_links_lead_to_files():
    """The README is short and points to docs/ for the rest: every relative link (of the README, CONTRIBUTING.md
    and docs/) must lead to a file."""
    for page in (ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))):
        text = page.read_text()
        targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t}
        missing = sorted(t for t in targets if t and not (page.parent / t).exists())
        assert not missing, (page.name, missing)
    readme = (ROOT / "README.md").read_text()
    assert "(CONTRIBUTING.md)" in readme and len(readme.splitlines()) <= 200
