"""docs/rules.md §0: packs as data, derived packs, site overrides, `auto` by clinical date."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from rems_core.rulepack import PACK_DIR, OutOfScope, PackLibrary, RulePackError


def test_the_shipped_packs_load_and_auto_is_offered() -> None:
    assert PackLibrary().ids == [
        "clozapine-label-2025",
        "clozapine-rems-2021",
        "clozapine-rems-2021+discretion",
        "auto",
    ]


def test_a_derived_pack_lists_only_its_overrides() -> None:
    packs = PackLibrary()
    discretion = packs.get("clozapine-rems-2021+discretion")
    assert discretion.administrative_failures.value == "warn"
    assert discretion.discharge_cap.value.inpatient_only == 7
    assert discretion.discharge_cap.value.by_monitoring_frequency_from == date(2022, 11, 2)
    assert discretion.psf_window == packs.get("clozapine-rems-2021").psf_window


@pytest.mark.parametrize(
    ("day", "pack"),
    [
        (date(2021, 11, 15), "clozapine-rems-2021"),
        (date(2021, 11, 18), "clozapine-rems-2021"),
        (date(2021, 11, 19), "clozapine-rems-2021+discretion"),
        (date(2025, 2, 23), "clozapine-rems-2021+discretion"),
        (date(2025, 2, 24), "clozapine-label-2025"),
        (date(2026, 11, 25), "clozapine-label-2025"),
    ],
)
def test_auto_chooses_by_clinical_date(day: date, pack: str) -> None:
    assert PackLibrary().for_date("auto", day).id == pack


def test_auto_before_the_modified_rems_is_out_of_scope() -> None:
    with pytest.raises(OutOfScope, match="2021-11-15"):
        PackLibrary().for_date("auto", date(2021, 11, 14))


def copy_packs(tmp_path: Path) -> Path:
    for source in PACK_DIR.glob("*.yaml"):
        (tmp_path / source.name).write_text(source.read_text())
    return tmp_path


def test_an_unknown_key_in_a_pack_is_an_error(tmp_path: Path) -> None:
    folder = copy_packs(tmp_path)
    path = folder / "clozapine-label-2025.yaml"
    path.write_text(path.read_text() + "psf_windw: {value: 40, section: x}\n")
    with pytest.raises(RulePackError, match="psf_windw"):
        PackLibrary(folder)


def test_a_parameter_without_its_section_is_an_error(tmp_path: Path) -> None:
    folder = copy_packs(tmp_path)
    path = folder / "clozapine-label-2025.yaml"
    path.write_text(path.read_text() + "psf_window: {value: 40}\n")
    PackLibrary(folder)  # merged with the base's section: fine
    base = folder / "clozapine-rems-2021.yaml"
    base.write_text(
        base.read_text().replace(
            'psf_window:                     {value: 37, unit: d, section: "§6.1 e"}',
            "psf_window: {value: 37}",
        )
    )
    with pytest.raises(RulePackError, match="section"):
        PackLibrary(folder)


def test_an_unknown_pack_id_names_the_known_ones() -> None:
    with pytest.raises(RulePackError, match="clozapine-label-2025"):
        PackLibrary().get("clozapine-rems-2019")


def test_a_site_override_derives_a_recorded_version(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(
        "site: general-hospital\npacks: [clozapine-rems-2021]\n"
        "parameters:\n  psf_window: {value: 40, section: 'site policy 12'}\n"
    )
    packs = PackLibrary(site_override=site)
    pack = packs.get("clozapine-rems-2021")
    assert pack.psf_window.value == 40
    assert pack.version.startswith("4+general-hospital.")
    assert packs.get("clozapine-label-2025").version == "4"


def test_a_site_override_with_a_wrong_value_type_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: x\nparameters:\n  psf_window: {value: soon}\n")
    with pytest.raises(RulePackError, match="psf_window"):
        PackLibrary(site_override=site)
