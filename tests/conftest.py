"""Shared fixtures: a real, migrated SQLite database and the application service on it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine

from gateway.service import RemsService, ServiceConfig
from gateway.writer import Writer
from rems_core.rulepack import PackLibrary
from rems_core.store.db import make_engine, upgrade

PACKS = PackLibrary()

T = TypeVar("T")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'rems.db'}"
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def writer(engine: Engine) -> Iterator[Writer]:
    writer = Writer(engine)
    writer.start()
    yield writer
    writer.stop()


@pytest.fixture
def service(writer: Writer) -> RemsService:
    return RemsService(writer, PACKS, ServiceConfig(rules="clozapine-rems-2021"))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)
