"""The example config and senders files load as the gateway reads them, and say every setting."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from gateway.config import Settings, load_settings
from mappings.hl7v2.senders import SenderConfig, SenderDirectory, SendersFileError

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "fixtures" / "config" / "rems-gateway.example.yaml"
SENDERS = ROOT / "fixtures" / "hl7" / "senders.example.yaml"


@pytest.fixture
def at_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example names the repository's files relative to its root, as `serve` runs there."""
    for key in [key for key in os.environ if key.startswith("REMS_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT)


def test_the_example_config_loads_with_the_files_it_names(at_the_root: None) -> None:
    settings = load_settings({}, CONFIG)
    assert settings.senders == Path("fixtures/hl7/senders.example.yaml")
    assert settings.smart_clients is not None and settings.cds_clients is not None
    assert (settings.rules, settings.timezone, settings.log_level) == (
        "clozapine-label-2025",
        "America/Chicago",
        "INFO",
    )
    assert settings.mllp_max_frame_bytes == 1_048_576 and settings.mllp_idle_timeout_seconds == 600


def test_the_example_config_names_every_setting() -> None:
    """Each setting is a key of the file, or a commented-out `# key:` line."""
    text = CONFIG.read_text(encoding="utf-8")
    named = set(re.findall(r"^#? ?([a-z_]+):", text, flags=re.MULTILINE))
    assert sorted(set(Settings.model_fields) - named) == []
    assert named - set(Settings.model_fields) == set()


def test_the_example_config_gives_the_defaults_it_says(at_the_root: None) -> None:
    """A key the example gives its default (the comment says so) loads as that default."""
    given = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    defaults = Settings.model_fields
    for key in ("http_port", "mllp_port", "mllp_max_connections", "review_retention_days"):
        assert given[key] == defaults[key].default, key


def test_the_example_senders_file_loads_and_shows_every_sender_key() -> None:
    directory = SenderDirectory.load(SENDERS)
    assert directory.accept_unknown is False
    lab = directory.find("LAB", "GENERAL HOSP")
    assert lab is not None and lab.timezone == "America/Chicago"
    assert lab.tls_fingerprint_sha256 is not None and len(lab.tls_fingerprint_sha256) == 64
    assert directory.find("SCENARIO", "RUNNER") is not None
    assert directory.find("SOMEONE", "ELSE") is None
    shown = {key for sender in yaml.safe_load(SENDERS.read_text())["senders"] for key in sender}
    assert sorted(set(SenderConfig.model_fields) - shown) == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("timezone", "America/Chicgo"), ("charset_fallback", "cp-1252-ish")],
)
def test_a_senders_file_with_a_wrong_zone_or_charset_does_not_load(
    tmp_path: Path, key: str, value: str
) -> None:
    """Found when the gateway starts, not by every message of that sender later."""
    path = tmp_path / "senders.yaml"
    path.write_text(yaml.safe_dump({"senders": [{"application": "LAB", key: value}]}))
    with pytest.raises(SendersFileError, match=f"senders.0.{key}"):
        SenderDirectory.load(path)


def shell_blocks(text: str) -> list[list[str]]:
    """Each ```sh block as its commands: lines continued by a backslash joined."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [block.replace("\\\n", " ").splitlines() for block in blocks]


def test_every_readme_snippet_that_starts_a_gateway_waits_until_it_is_ready() -> None:
    """A pasted block runs its next command at once: one that starts `serve` (or `make run`) in
    the background must wait for /readyz before anything talks to it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    started = 0
    for block in shell_blocks(readme):
        for number, line in enumerate(block):
            command = line.split("#")[0].rstrip()
            if command.endswith("&") and ("serve" in command or "make run" in command):
                started += 1
                following = next((rest for rest in block[number + 1 :] if rest.strip()), "")
                assert "until curl -sf" in following and "/readyz" in following, block
    assert started >= 5


def test_every_setting_is_documented_in_the_readme_and_the_contract() -> None:
    """README names each setting's flag (a table row or `--flag value`), contracts §1 its key."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    contracts = (ROOT / "docs" / "contracts.md").read_text(encoding="utf-8")
    running = contracts[contracts.index("## 1. Running it") : contracts.index("## 2.")]
    for name in Settings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert f"`{flag}`" in readme or f"`{flag} " in readme, f"README: {flag}"
        assert f"`{name}`" in running, f"contracts.md §1: {name}"
