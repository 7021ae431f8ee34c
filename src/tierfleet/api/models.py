"""``GET /v1/models`` (and ``/v1/models/{id}``): what a client may put in ``model``, with
what it can do.

OpenAI's list shape (``{"object": "list", "data": [{"id", "object": "model",
"created", "owned_by"}]}``), so chat UIs and agent frameworks that list models
work; each entry adds a ``tierfleet`` object with the privacy levels that may use
it and its capabilities (vision, tools, JSON Schema output, context window), so a
client can tell before it asks whether a confidential job or a tool call may go there.
``GET /v1/models/{id}`` answers one entry (the SDK's ``client.models.retrieve``), or
OpenAI's 404 ``model_not_found``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path
from pydantic import BaseModel

from ..config import FleetConfig
from ..jobs import Privacy
from .errors import ERROR_RESPONSES, ApiError, ErrorResponse
from .openai import AUTO_MODELS

__all__ = ["ModelList", "add_models_route", "model_list"]

PRIVACIES = [p.value for p in Privacy]


class Capabilities(BaseModel):
    vision: bool
    tools: bool
    json_schema: bool
    context_window: int


class ModelInfo(BaseModel):
    kind: Literal["auto", "model", "tier"]
    tiers: list[str]
    privacy: list[str]  # the privacy levels allowed to use it
    capabilities: Capabilities
    simulated: bool


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tierfleet"
    tierfleet: ModelInfo


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


def _model_tiers(config: FleetConfig, model: str) -> list[str]:
    return [t for t in config.tiers
            if any(model in h.models for h in config.hosts_for(t).values())]


def _model_caps(config: FleetConfig, model: str, tiers: list[str]) -> Capabilities:
    mc = config.models.get(model)
    windows = [config.context_window(name, model) for t in tiers
               for name, h in config.hosts_for(t).items() if model in h.models]
    return Capabilities(vision=bool(mc and mc.vision), tools=mc.tools if mc else True,
                        json_schema=mc.json_schema if mc else True,
                        context_window=max(windows, default=0))


def _tier_models(config: FleetConfig, tier: str) -> list[str]:
    names = list(dict.fromkeys([*config.tiers[tier].models.values(),
                                *(m for h in config.hosts_for(tier).values() for m in h.models)]))
    return names


def _entry(config: FleetConfig, ident: str, kind: Literal["auto", "model", "tier"],
           tiers: list[str], caps: list[Capabilities]) -> ModelEntry:
    simulated = bool(tiers) and all(h.simulated for t in tiers
                                    for h in config.hosts_for(t).values())
    return ModelEntry(id=ident, tierfleet=ModelInfo(
        kind=kind, tiers=tiers,
        privacy=[p for p in PRIVACIES if any(config.tier_allowed(t, p) for t in tiers)],
        capabilities=Capabilities(
            vision=any(c.vision for c in caps), tools=any(c.tools for c in caps),
            json_schema=any(c.json_schema for c in caps),
            context_window=max((c.context_window for c in caps), default=0)),
        simulated=simulated))


def model_list(config: FleetConfig) -> ModelList:
    """``auto``, every configured model some host serves, and ``tier:NAME`` for model tiers."""
    model_tiers = [t for t, tc in config.tiers.items() if tc.place != "rules"]
    per_model: dict[str, tuple[list[str], Capabilities]] = {}
    names = dict.fromkeys([*config.models,
                           *(m for t in model_tiers for m in _tier_models(config, t))])
    for name in names:
        tiers = _model_tiers(config, name)
        if tiers:
            per_model[name] = (tiers, _model_caps(config, name, tiers))
    data = [_entry(config, "auto", "auto", model_tiers, [c for _, c in per_model.values()])]
    data += [_entry(config, name, "model", tiers, [caps])
             for name, (tiers, caps) in per_model.items()]
    for t in model_tiers:
        caps = [per_model[m][1] for m in _tier_models(config, t) if m in per_model]
        data.append(_entry(config, f"tier:{t}", "tier", [t], caps))
    return ModelList(data=data)


def add_models_route(app: FastAPI, config: FleetConfig, *, auth: list[Any]) -> None:
    listing = model_list(config)  # the config does not change while the API runs

    @app.get("/v1/models", response_model=ModelList, dependencies=auth, tags=["openai"],
             responses=ERROR_RESPONSES,
             summary="Models a chat request may name, with privacy and capabilities")
    async def list_models() -> ModelList:
        return listing

    by_id = {m.id: m for m in listing.data}

    # ``:path``: model names may hold a '/' ("org/model"), as ids do at OpenAI.
    @app.get("/v1/models/{model_id:path}", response_model=ModelEntry, dependencies=auth,
             tags=["openai"],
             responses={**ERROR_RESPONSES,
                        404: {"model": ErrorResponse, "description": "no such model"}},
             summary="One model a chat request may name (the SDK's models.retrieve)")
    async def retrieve_model(
        model_id: Annotated[str, Path(min_length=1, max_length=256)],
    ) -> ModelEntry:
        entry = _lookup(by_id, config, model_id)
        if entry is None:
            raise ApiError(404, f"The model {model_id!r} does not exist in this fleet; "
                           "GET /v1/models lists them", code="model_not_found", param="model")
        return entry


def _lookup(by_id: dict[str, ModelEntry], config: FleetConfig, name: str) -> ModelEntry | None:
    """The entry for ``name`` as a chat request's ``model`` reads it: an id, an alias of
    ``auto``, or a bare tier name no model shares (see ``openai.resolve_target``)."""
    if name in by_id:
        return by_id[name]
    if name.strip().lower() in AUTO_MODELS:
        return by_id["auto"].model_copy(update={"id": name})
    tier = by_id.get(f"tier:{name}")
    return tier.model_copy(update={"id": name}) if tier is not None else None
