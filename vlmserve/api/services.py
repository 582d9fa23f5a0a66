"""The ``Services`` container: every layer built once, from the settings, and wired together.

This module and ``app.py`` alone join the layers (STYLE.md section 2); tests construct ``Services``
directly with fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from vlmserve.api.auth import KeyChecker
from vlmserve.api.limits import RateLimiter
from vlmserve.api.metrics import Metrics, ObservedFetcher, ObservedIntake
from vlmserve.catalog.registry import Catalog, catalog_from_settings
from vlmserve.catalog.spec import EngineBinding
from vlmserve.engine.client import EngineClient
from vlmserve.media.intake import MediaIntake
from vlmserve.serving.chat import ChatService
from vlmserve.serving.files import FileService
from vlmserve.serving.prepare import PromptPreparer
from vlmserve.serving.tokens import TokenService
from vlmserve.settings import Settings
from vlmserve.storage.files import FileStore
from vlmserve.storage.keys import KeyStore
from vlmserve.storage.usage import UsageLedger

log = logging.getLogger("vlmserve")

EngineFactory = Callable[[EngineBinding, Settings], EngineClient]


@dataclass(slots=True)
class Services:
    settings: Settings
    catalog: Catalog
    engines: dict[EngineBinding, EngineClient]
    intake: MediaIntake
    preparer: PromptPreparer
    chat: ChatService
    tokens: TokenService
    keys: KeyChecker
    files: FileService
    limiter: RateLimiter
    ledger: UsageLedger
    metrics: Metrics

    async def start(self) -> None:
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        await self.keys.start()
        self.limiter.load_spent(await self.ledger.spent())
        await self.ledger.start()

    async def close(self) -> None:
        await asyncio.gather(*(engine.close() for engine in self.engines.values()))
        await self.keys.close()
        await self.ledger.close()  # the last rows
        await self.ledger.db.close()
        await self.intake.close()
        await self.files.close()


def default_engine_factory(binding: EngineBinding, settings: Settings) -> EngineClient:
    # Imported here so the API (and remote mode) start without torch being imported.
    if binding.kind == "remote":
        return remote_engine(binding, settings)
    from vlmserve.engine.local.engine import LocalEngine

    return LocalEngine(binding, settings.engine)


def remote_engine(binding: EngineBinding, settings: Settings) -> EngineClient:
    """Replicas generate; the bound model's processor, when on this machine, counts and sizes."""
    from vlmserve.engine.remote.engine import RemoteEngine
    from vlmserve.engine.remote.processor import local_processor

    directory = local_processor(binding.model)
    if directory is None:
        log.warning(
            "no processor files for %s on this machine: token counts and image sizes come "
            "from the replicas (give --model a directory with the model's processor and "
            "tokenizer to count locally)",
            binding.model,
        )
        return RemoteEngine(binding, settings.remote)
    from vlmserve.engine.local.counter import ProcessorCounter  # imports torch, transformers

    return RemoteEngine(binding, settings.remote, token_counter=ProcessorCounter(directory))


def token_counts(binding: EngineBinding) -> str:
    """Who counts the prompt tokens of ``binding``: "local processor" or "upstream"."""
    if binding.kind != "remote":
        return "local processor"
    from vlmserve.engine.remote.processor import token_counts as remote_token_counts

    return remote_token_counts(binding.model)


def check_models(settings: Settings) -> None:
    """Before the server starts: every locally served model can be loaded from disk or the hub
    (one quick try); raises ``ModelUnavailableError`` with what to do instead."""
    catalog = catalog_from_settings(settings.catalog, settings.engine)
    models = {b.model for b in catalog.bindings() if b.kind != "remote"}
    if not models:
        return
    from vlmserve.engine.local.loader import locate  # imports torch

    for model in sorted(models):
        locate(model)


def build_services(
    settings: Settings,
    engine_factory: EngineFactory = default_engine_factory,
    catalog: Catalog | None = None,
) -> Services:
    catalog = catalog or catalog_from_settings(settings.catalog, settings.engine)
    engines = {binding: engine_factory(binding, settings) for binding in catalog.bindings()}
    store = FileStore.from_settings(settings.storage)  # touches the disk on first use only
    metrics = Metrics(engines)
    fetcher = ObservedFetcher(settings.media, metrics=metrics)
    intake = ObservedIntake(settings.media, files=store, fetcher=fetcher, metrics=metrics)
    preparer = PromptPreparer(catalog, engines, intake, settings.media)
    # Keys and the ledger share one connection to the storage database (files have their own).
    key_store = KeyStore.at(settings.storage.data_dir)
    limits = settings.limits
    return Services(
        settings=settings,
        catalog=catalog,
        engines=engines,
        intake=intake,
        preparer=preparer,
        chat=ChatService(preparer),
        tokens=TokenService(preparer),
        keys=KeyChecker(settings.server, key_store, limits.key_refresh_s),
        files=FileService(store, fetcher, settings.storage),
        limiter=RateLimiter(limits),
        ledger=UsageLedger(key_store.db, limits.ledger_flush_s),
        metrics=metrics,
    )
