"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from fastapi import APIRouter

from vlmserve.api.deps import ServicesDep, TenantDep
from vlmserve.catalog.spec import ModelSpec
from vlmserve.errors import ModelNotFoundError, NotFoundError
from vlmserve.protocol.models import ModelCard, ModelList

router = APIRouter()


async def _card(services: ServicesDep, spec: ModelSpec) -> ModelCard:
    engine = services.engines[spec.binding]
    return ModelCard(
        id=spec.id,
        created=spec.created,
        owned_by=spec.owned_by,
        context_window=await services.preparer.context_window(spec, engine),
        input_modalities=list(spec.input_modalities),
        max_images=spec.max_images,
    )


@router.get("/v1/models", response_model=ModelList, summary="List the models")
async def list_models(services: ServicesDep, tenant: TenantDep) -> ModelList:
    return ModelList(data=[await _card(services, spec) for spec in services.catalog])


@router.get("/v1/models/{model}", response_model=ModelCard, summary="Retrieve one model")
async def retrieve_model(model: str, services: ServicesDep, tenant: TenantDep) -> ModelCard:
    try:
        spec = services.catalog.get(model)
    except ModelNotFoundError as exc:  # in the path, an unknown model is an unknown resource
        raise NotFoundError(exc.message, param="model", code="model_not_found") from exc
    return await _card(services, spec)
