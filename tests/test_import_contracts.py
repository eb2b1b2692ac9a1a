"""The import contracts of pyproject.toml (docs/architecture.md) fail on a planted violation:
`make test` runs `lint-imports` on the real tree; here it runs on a copy with one bad import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_copy(tmp_path: Path, module: str, planted: str) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on a copy of the three packages where ``module`` also imports ``planted``."""
    for package in ("gateway", "mappings", "rems_core"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{planted}  # planted\n")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_real_tree_keeps_every_contract(tmp_path: Path) -> None:
    checked = lint_copy(tmp_path, "gateway.logs", "import logging")
    assert checked.returncode == 0, checked.stdout
    assert "0 broken" in checked.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken", "why"),
    [
        (
            "gateway.app.units.labs",
            "from gateway.app.service import RemsService",
            "no import loops, at any depth",
            ".units -> .service",
        ),
        (
            "rems_core.anc",
            "import sqlalchemy",
            "the rules (rems_core outside its store) use no database",
            "rems_core.anc -> sqlalchemy",
        ),
        (
            "mappings.hl7v2.oru",
            "import gateway.app.values",
            "edges, then the application, then mappings, then the rules",
            "mappings.hl7v2.oru -> gateway.app.values",
        ),
        (
            "gateway.mllp.intake",
            "import gateway.fhir.http",
            "the MLLP and FHIR edges know nothing of each other",
            "gateway.mllp.intake -> gateway.fhir.http",
        ),
        (
            "gateway.fhir.observations",
            "import gateway.app.units.labs",
            "units of work only through the service",
            "gateway.fhir.observations -> gateway.app.units.labs",
        ),
        (
            "rems_core.psf",
            "import rems_core.store.repo",
            "only the gateway reaches the store",
            "rems_core.psf -> rems_core.store.repo",
        ),
    ],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, broken: str, why: str
) -> None:
    checked = lint_copy(tmp_path, module, planted)
    assert checked.returncode == 1, checked.stdout
    report = checked.stdout.split("Broken contracts", 1)[-1]
    assert broken in report
    assert why in report
