"""The catalogue: which public model names exist, their limits, and the engine each is bound to."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from vlmserve.catalog.spec import EngineBinding, ModelSpec
from vlmserve.errors import ModelNotFoundError
from vlmserve.settings import CatalogSettings, EngineSettings


class CatalogError(ValueError):
    """A catalogue file that cannot be used; raised at start-up, never for a request."""


class Catalog:
    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs = list(specs)
        self._by_name: dict[str, ModelSpec] = {}
        for spec in specs:
            for name in (spec.id, *spec.aliases):
                if name in self._by_name:
                    raise CatalogError(f"model name {name!r} appears twice in the catalogue")
                self._by_name[name] = spec

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> ModelSpec:
        spec = self._by_name.get(name)
        if spec is None:
            known = ", ".join(s.id for s in self._specs)
            raise ModelNotFoundError(
                f"The model {name!r} does not exist or you do not have access to it. "
                f"Available models: {known}.",
                param="model",
            )
        return spec

    def bindings(self) -> list[EngineBinding]:
        """The distinct engine bindings, in catalogue order (entries may share one engine)."""
        return list(dict.fromkeys(spec.binding for spec in self._specs))

    def rebind(self, binding: EngineBinding) -> Catalog:
        return Catalog([dataclasses.replace(spec, binding=binding) for spec in self._specs])


def load_catalog(file: Path | None = None) -> Catalog:
    if file is None:
        text = resources.files("vlmserve.catalog").joinpath("default.toml").read_text("utf-8")
        source = "the built-in catalogue"
    else:
        text = Path(file).expanduser().read_text("utf-8")
        source = str(file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: {exc}") from exc
    return parse_catalog(data, source)


def parse_catalog(data: Mapping[str, Any], source: str = "catalogue") -> Catalog:
    default_binding = dict(data.get("defaults", {}).get("binding", {}))
    entries = data.get("models", [])
    if not entries:
        raise CatalogError(f"{source}: no [[models]] entries")
    return Catalog([_spec(entry, default_binding, source) for entry in entries])


def _spec(entry: Mapping[str, Any], default_binding: Mapping[str, Any], source: str) -> ModelSpec:
    fields = dict(entry)
    binding = {**default_binding, **fields.pop("binding", {})}
    for key in ("input_modalities", "aliases"):
        if key in fields:
            fields[key] = tuple(fields[key])
    if "upstreams" in binding:
        binding["upstreams"] = tuple(binding["upstreams"])
    try:
        return ModelSpec(**fields, binding=EngineBinding(**binding))
    except TypeError as exc:
        raise CatalogError(f"{source}: model {entry.get('id')!r}: {exc}") from exc


def catalog_from_settings(catalog: CatalogSettings, engine: EngineSettings) -> Catalog:
    """The catalogue to serve: the file (or built-in one), rebound to ``catalog.model`` if set.

    With ``catalog.upstreams`` every entry is rebound to one remote engine over those replicas;
    ``catalog.model`` (default: the catalogue's first model) then names the processor and
    tokenizer used to size images and count tokens, and the model the replicas serve unless
    ``catalog.upstream_model`` says otherwise.
    """
    loaded = load_catalog(catalog.file)
    first = loaded.bindings()[0]
    if catalog.upstreams:
        model = catalog.model or first.model
        # A catalogue already bound to remote replicas keeps their model name unless told.
        known = first.upstream_model if not catalog.model else None
        return loaded.rebind(
            EngineBinding(
                kind="remote",
                model=model,
                upstreams=catalog.upstreams,
                upstream_model=catalog.upstream_model or known or model,
            )
        )
    if not catalog.model:
        return loaded
    return loaded.rebind(
        EngineBinding(
            kind="local",
            model=catalog.model,
            dtype=engine.dtype if engine.dtype != "auto" else first.dtype,
            device=engine.device if engine.device != "auto" else first.device,
        )
    )
