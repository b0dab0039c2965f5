"""Service endpoints: /health, /ping, /v1/models, /config, /metrics, memory, languages and routes."""

from __future__ import annotations

import time

from aiohttp import web

from .. import __version__, metrics
from ..config import parse_duration
from ..core import Core
from ..exceptions import EngineUnavailable, InvalidInput, ModelBusy, NotFound
from ..schemas.meta import (
    ChunkQueue,
    Config,
    DefaultsConfig,
    Endpoint,
    Endpoints,
    EngineWorker,
    EventLog,
    Health,
    HealthConfig,
    Language,
    Languages,
    LimitsConfig,
    MemoryManagementConfig,
    MemoryReset,
    MemoryStatus,
    Model,
    ModelConfig,
    ModelList,
    Ping,
    ServerConfig,
)
from ..schemas.status import EngineResidency, MemorySnapshot
from ..state import CORE, METRICS
from .params import bool_param, query_bool
from .routing import Reply, api_route, json_model
from .status import engine_view, memory_info

routes = web.RouteTableDef()

MODEL_NAME = {"model": "An engine's name, or a model name that chooses one (see /v1/models)"}


@api_route(
    routes, "GET", "/health", "/v1/health",
    operation_id="getHealth", summary="Ready, loading, or failed", tag="service", responses={200: Health},
)
async def health(request: web.Request) -> web.Response:
    """Ready, initializing or failed, always 200 as chatterbox-tts-api answers (its frontend
    reads ``status`` and ``initialization_error`` rather than the code); /ping is liveness."""
    core = request.app[CORE]
    engine = engine_view(core)
    if engine.state == "error":
        initialization_state = "error"
    elif engine.state in ("ready", "unloading", "unloaded"):  # unloaded: it loads again on the next request
        initialization_state = "ready"
    else:
        initialization_state = "initializing"
    # Without its event log the server cannot take requests, however ready its engine.
    problem = core.bus.problem or (core.chunks.problem if core.chunks is not None else None)
    status = "error" if problem else {"ready": "healthy"}.get(initialization_state, initialization_state)
    settings = core.settings
    body = Health(
        status=status,  # type: ignore[arg-type]
        model_loaded=engine.state == "ready",
        device=core.engine.device,
        initialization_state=initialization_state,  # type: ignore[arg-type]
        initialization_progress=f"{engine.load_progress:.0f}%",
        initialization_error=engine.error,
        engine=engine,
        engines=[EngineResidency.model_validate(state) for state in core.tracker.engine_states()],
        queue_length=len(core.tracker.queued()),
        version=__version__,
        config=HealthConfig(
            max_chunk_length=settings.max_chunk_length,
            max_total_length=settings.max_total_length,
            voice_sample_path=settings.voice_sample_path,
            default_exaggeration=settings.exaggeration,
            default_cfg_weight=settings.cfg_weight,
            default_temperature=settings.temperature,
        ),
        memory_info=memory_info(core),
        event_log=event_log_view(core),
        chunk_queue=chunk_queue_view(core),
    )
    return json_model(body)


def chunk_queue_view(core: Core) -> ChunkQueue | None:
    if core.chunks is None:
        return None
    workers = [
        EngineWorker(
            name=name, device=worker["device"], engines=list(worker["engines"]),
            loaded=worker["loaded"], capacity=worker["capacity"], running=worker["running"],
        )
        for name, worker in core.chunks.workers.items()
    ]
    return ChunkQueue(url=core.chunks.url, connected=core.chunks.problem is None, error=core.chunks.problem, workers=workers)


def event_log_view(core: Core) -> EventLog:
    return EventLog(
        backend="redis" if core.bus.url else "memory",
        node=core.bus.node,
        url=core.bus.url,
        connected=core.bus.problem is None,
        error=core.bus.problem,
    )


@api_route(
    routes, "GET", "/ping", "/v1/ping", summary="Liveness", tag="service", responses={200: Reply("Alive", Ping)}
)
async def ping(request: web.Request) -> web.Response:
    return json_model(Ping(status="ok", message="pong", timestamp=time.time()))


@api_route(
    routes, "GET", "/v1/models", "/models",
    operation_id="listModels", summary="OpenAI's model list", tag="service", responses={200: ModelList},
)
async def models(request: web.Request) -> web.Response:
    core = request.app[CORE]
    return json_model(ModelList(object="list", data=[model_view(core, name) for name in core.catalog.model_names]))


@api_route(
    routes, "GET", "/v1/models/{model}", "/models/{model}",
    operation_id="getModel", summary="One model: the engine it chooses and that engine's state", tag="service",
    responses={200: Model}, errors=(NotFound,), path_params=MODEL_NAME,
)
async def get_model(request: web.Request) -> web.Response:
    name, _ = _model(request)
    return json_model(model_view(request.app[CORE], name))


@api_route(
    routes, "POST", "/v1/models/{model}/load", "/models/{model}/load",
    operation_id="loadModel",
    summary="Load a model's engine now (unloading the least recently used idle one if MAX_LOADED_MODELS are loaded); "
    "answers once it is ready, and its keep-alive starts",
    tag="service",
    responses={200: Model}, errors=(NotFound, EngineUnavailable), path_params=MODEL_NAME,
)
async def load_model(request: web.Request) -> web.Response:
    name, engine = _model(request)
    await request.app[CORE].load_engine(engine)
    return json_model(model_view(request.app[CORE], name))


@api_route(
    routes, "POST", "/v1/models/{model}/unload", "/models/{model}/unload",
    operation_id="unloadModel",
    summary="Unload a model's engine now, ending its process and giving back its memory (a 409 while requests use it); "
    "the next request for it loads it again",
    tag="service",
    responses={200: Model}, errors=(NotFound, ModelBusy), path_params=MODEL_NAME,
)
async def unload_model(request: web.Request) -> web.Response:
    name, engine = _model(request)
    await request.app[CORE].engines[engine].unload("unloaded on request (POST /v1/models/{model}/unload)")
    return json_model(model_view(request.app[CORE], name))


def _model(request: web.Request) -> tuple[str, str]:
    """The model the path names and the engine it chooses (a 404 listing the known models
    when there is none)."""
    catalog = request.app[CORE].catalog
    name = request.match_info["model"]
    engine = catalog.engine_for(name)
    if engine is None:
        raise NotFound(f"Model {name!r} not found; known: {', '.join(catalog.model_names)}", param="model")
    return name, engine


def model_view(core: Core, name: str) -> Model:
    engine = core.catalog.engine_for(name)
    assert engine is not None
    return Model(
        id=name,
        object="model",
        created=int(core.started_at),
        owned_by="chatterbox-status",
        engine=engine,
        default=engine == core.catalog.default,
        engine_state=EngineResidency.model_validate(core.tracker.engine_state(engine)),
    )


@api_route(
    routes, "GET", "/config", "/v1/config",
    operation_id="getConfig", summary="The settings in force", tag="service", responses={200: Config},
)
async def config(request: web.Request) -> web.Response:
    core = request.app[CORE]
    settings = core.settings
    return json_model(
        Config(
            server=ServerConfig(host=settings.host, port=settings.port, version=__version__),
            model=ModelConfig(
                engine=core.choice.name,
                requested_engine=settings.engine,
                device=core.engine.device,
                voice_sample_path=settings.voice_sample_path,
                model_cache_dir=settings.model_cache_dir,
                engines=list(core.catalog.engines),
                model_aliases=core.catalog.aliases,
                keep_alive_seconds=parse_duration(settings.model_keep_alive),
                max_loaded_models=settings.max_loaded_models,
            ),
            defaults=DefaultsConfig(
                exaggeration=settings.exaggeration,
                cfg_weight=settings.cfg_weight,
                temperature=settings.temperature,
                max_chunk_length=settings.max_chunk_length,
                max_total_length=settings.max_total_length,
            ),
            memory_management=MemoryManagementConfig(enable_memory_monitoring=settings.enable_memory_monitoring),
            limits=LimitsConfig(
                max_queue_size=settings.max_queue_size,
                history_size=settings.history_size,
                max_body_size=settings.max_body_size,
            ),
            cors_origins=settings.cors_origins,
        )
    )


@api_route(
    routes, "GET", "/metrics",
    operation_id="getMetrics", summary="Prometheus metrics", tag="service",
    responses={200: Reply("The text exposition format", media=("text/plain",))},
)
async def prometheus_metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": metrics.CONTENT_TYPE})


@api_route(
    routes, "GET", "/memory", "/v1/memory",
    operation_id="getMemory",
    summary="Memory in use now: process and system RAM, and CUDA's allocated, reserved and peak",
    tag="service",
    responses={200: MemoryStatus},
)
async def memory_status(request: web.Request) -> web.Response:
    core = request.app[CORE]
    snapshot = MemorySnapshot.model_validate(core.memory())
    return json_model(MemoryStatus(memory_info=snapshot, engine=core.engine.name))


@api_route(
    routes, "POST", "/memory/reset", "/v1/memory/reset",
    operation_id="resetMemory",
    summary="Collect garbage and empty torch's CUDA cache (resetting its peak)",
    tag="service",
    responses={200: Reply("Memory before and after", MemoryReset)},
    errors=(InvalidInput,),
    params=(bool_param("confirm", "Must be true, or the call is a 400"),),
)
async def memory_reset(request: web.Request) -> web.Response:
    """Collect garbage and empty torch's CUDA cache (resetting its peak), on confirm=true."""
    if not query_bool(request, "confirm"):
        raise InvalidInput("Releasing memory needs confirm=true", param="confirm", code="confirmation_required")
    core = request.app[CORE]
    before = MemorySnapshot.model_validate(core.memory())
    await core.release_memory()
    after = MemorySnapshot.model_validate(core.memory())
    return json_model(MemoryReset(success=True, memory_before=before, memory_after=after))


@api_route(
    routes, "GET", "/languages", "/v1/languages",
    operation_id="listLanguages",
    summary="The languages the engine speaks (the speech request's language field)",
    tag="service",
    responses={200: Languages},
)
async def languages(request: web.Request) -> web.Response:
    """The languages the engine speaks (all of Chatterbox Multilingual's once it has loaded)."""
    engine = request.app[CORE].engine
    codes = engine.languages
    return json_model(
        Languages(
            engine=engine.name,
            multilingual=len(codes) > 1,
            languages=[Language(code=code, name=name) for code, name in sorted(codes.items())],
            count=len(codes),
        )
    )


@api_route(
    routes, "GET", "/endpoints", "/v1/endpoints", "/routes",
    operation_id="listEndpoints",
    summary="Every path the server answers, with its methods",
    tag="service",
    responses={200: Endpoints},
)
async def endpoints(request: web.Request) -> web.Response:
    """Every path the server answers, with its methods (aliases listed as paths of their own)."""
    methods: dict[str, set[str]] = {}
    for route in request.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD":
            methods.setdefault(path, set()).add(route.method)
    listed = [Endpoint(path=path, methods=sorted(found)) for path, found in sorted(methods.items())]
    return json_model(Endpoints(endpoints=listed, count=len(listed)))
