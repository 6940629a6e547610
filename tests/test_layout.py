"""The house: the library's folders keep their layers, and the README's Layout names every module there is."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = sorted(p.parent for p in (ROOT / "ingestion").glob("*/__init__.py"))


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / ".importlinter")], cwd=root, capture_output=True,
                          text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_no_import_runs_upward_or_into_a_script():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout, r.stdout


def test_an_upward_import_breaks_the_check(tmp_path):
    """The same check on a copy with one import that runs upward (the store reading the queue) fails."""
    shutil.copytree(ROOT / "ingestion", tmp_path / "ingestion", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    paid = tmp_path / "ingestion" / "storage" / "paid_vectors.py"
    upward = "import orjson\n\nfrom ingestion.tracking import file_queue  # noqa: F401\n"
    paid.write_text(paid.read_text().replace("import orjson\n", upward, 1))
    r = lint(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "ingestion.storage.paid_vectors -> ingestion.tracking.file_queue" in r.stdout, r.stdout


def test_every_folder_says_what_it_owns():
    assert [p.name for p in PACKAGES] == ["common", "openai_api", "run", "storage", "text", "tracking"]
    for package in PACKAGES:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{package.name}/__init__.py has no docstring saying what it holds"
        for module in package.glob("*.py"):
            assert ast.get_docstring(ast.parse(module.read_text())), f"{module} has no docstring"


def test_the_readme_layout_names_every_module_and_no_other():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("\n## ")] if "\n## " in layout else layout
    named = set(re.findall(r"^\| `([a-z_]+/[a-z_]+)` \|", layout, re.M))
    there = {f"{p.name}/{m.stem}" for p in PACKAGES for m in p.glob("*.py") if m.stem != "__init__"}
    assert named == there, f"README only: {sorted(named - there)}; code only: {sorted(there - named)}"
    scripts = {p.stem for p in (ROOT / "ingestion").glob("*.py") if p.stem != "__init__"}
    assert scripts == {"generate_file_queue", "ingest_one_file", "process_queue_worker", "auto_chunker",
                       "optimize_chromadb", "query_chromadb"}, "ingestion/ holds the scripts and nothing else"
    for script in scripts:
        assert script in layout, f"the Layout does not name {script}"
