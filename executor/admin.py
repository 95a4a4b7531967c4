"""The admin API: see the layout and the switch history, ask for a switch.

Routes (guarded by the API key like ``/v1``):
- ``GET /admin/layout``: the groups (ranks, width, state, role, queues, KV blocks), the
  switch under way and the queued ones, paused requests per group, start-up costs;
- ``GET /admin/switches``: every switch started or queued, in order: its
  ``policies.records.SWITCH_COLUMNS`` row (once it has begun) and its state;
- ``POST /admin/switch``: a target, by name (``{"layout": "dp" | "tp" | "mixed",
  "engines_per_group": 2}``), by width (``{"width": 2}``: uniform groups of 2 ranks) or by
  explicit groups (``{"groups": [[0, 1], [2], [3]]}``), with ``strategy`` (how merging
  groups reach the switch point: sequential | soft | hard; default sequential),
  ``split_strategy`` (drain | recompute; default the server's) and a ``reason``. Answers 202
  with the switch's id and state (``switching``, or ``queued`` behind the one under way),
  400 for a switch this node cannot make, 409 for one it will not take now (already in
  that layout, the queue is full), 503 once a worker has died; errors in OpenAI's shape.
  The body is ``SwitchRequest``, whose schema ``/openapi.json`` carries; the handler parses
  it itself, so that a malformed one is a 400 with a reason (not FastAPI's 422).

All handlers run on the event loop that owns the control plane.
"""
from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from executor.coordinator import (
    ADMIN_STRATEGIES,
    Coordinator,
    Rejected,
    SwitchRefused,
    Unavailable,
)
from executor.openai_protocol import ApiError, bad_request, json_body, parse_body
from executor.serve_config import EXECUTOR_SPLIT_STRATEGIES
from policies.layout import Group, Layout


def _document(schema: dict) -> None:
    """``SwitchRequest``'s JSON schema (``/openapi.json``) as the handler takes it: the
    accepted strategies as enums, a group as a non-empty list of ranks, exactly one target,
    and ``engines_per_group`` only with layout 'mixed'. A field left out is unset, so the
    schema offers no ``null``s (they are taken as unset all the same). Documentation only:
    validation stays the model's, the handler's and the coordinator's, each with its own 400
    message."""
    props = schema["properties"]
    for name, prop in props.items():
        if any(alt.get("type") == "null" for alt in prop.get("anyOf", ())):
            (kept,) = [alt for alt in prop.pop("anyOf") if alt.get("type") != "null"]
            prop.pop("default", None)
            props[name] = {**kept, **prop}
    props["strategy"]["enum"] = list(ADMIN_STRATEGIES)
    props["split_strategy"]["enum"] = list(EXECUTOR_SPLIT_STRATEGIES)
    group = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
    props["groups"].update(items=group, minItems=1)
    # Exactly one target; engines_per_group with layout 'mixed' only. Branches that exclude
    # each other (a property given ``false`` must be absent), so that generators such as the
    # schemathesis fuzz's produce bodies that name one target.
    def target(name: str, **allowed: dict) -> dict:
        absent = {k: False for k in ("layout", "width", "groups", "engines_per_group")}
        return {"required": [name], "properties": {**absent, name: {}, **allowed}}

    schema["oneOf"] = [target("layout", layout={"enum": ["dp", "tp"]}),
                       target("layout", layout={"const": "mixed"}, engines_per_group={}),
                       target("width"), target("groups")]


class SwitchRequest(BaseModel):
    """The body of ``POST /admin/switch``: a target layout and how to reach it. Name the
    target with exactly one of ``layout``, ``width`` or ``groups``."""
    model_config = ConfigDict(extra="forbid", json_schema_extra=_document)
    layout: Literal["dp", "tp", "mixed"] | None = Field(
        default=None, description="A named layout: 'dp' (one group per rank), 'tp' (one group "
        "of every rank) or 'mixed' (uniform groups of engines_per_group ranks).")
    engines_per_group: int | None = Field(
        default=None, ge=1, description="With layout 'mixed' only: the ranks per group "
        "(default: the server's --engines-per-group).")
    width: int | None = Field(
        default=None, ge=1, description="Uniform groups of this many ranks; it must divide "
        "the node's ranks and be a width the model splits over (400 otherwise).")
    groups: list[list[int]] | None = Field(
        default=None, description="Explicit groups, each a run of consecutive ranks; "
        "together they cover every rank once, each an aligned power-of-two range or the "
        "whole node (400 otherwise). E.g. [[0, 1], [2], [3]].")
    # Checked by the coordinator (its own 400 messages), documented as enums.
    strategy: str = Field(
        default="sequential", description="How merging groups reach the switch point: "
        "'sequential' (drain), 'soft' (drain, pre-running held work) or 'hard' (pause "
        "running requests, keeping their KV).")
    split_strategy: str | None = Field(
        default=None, description="How splitting groups reach it: 'drain' or 'recompute' "
        "(default: the server's switch config).")
    reason: str = Field(default="admin", max_length=200,
                        description="Recorded with the switch (GET /admin/switches).")


def target_layout(req: SwitchRequest, num_ranks: int, engines_per_group: int) -> Layout:
    """The layout a switch request names; ``ApiError`` (400) when it names none or a bad one."""
    named = [k for k in ("layout", "width", "groups") if getattr(req, k) is not None]
    if len(named) != 1:
        raise bad_request("name the target with exactly one of 'layout', 'width' or 'groups' "
                          f"(got {named or 'none'})")
    if req.engines_per_group is not None and req.layout != "mixed":
        raise bad_request("engines_per_group goes with layout 'mixed'", "engines_per_group")
    try:
        if req.layout == "dp":
            return Layout.static_dp(num_ranks)
        if req.layout == "tp":
            return Layout.static_tp(num_ranks)
        if req.layout == "mixed":
            return Layout.uniform(num_ranks, req.engines_per_group or engines_per_group)
        if req.width is not None:
            return Layout.uniform(num_ranks, req.width)
        return Layout(num_ranks, tuple(_group(ranks) for ranks in req.groups))
    except ValueError as e:
        raise bad_request(f"not a layout of this node's {num_ranks} ranks: {e}",
                          named[0]) from None


def _group(ranks: list[int]) -> Group:
    if not ranks or ranks != list(range(ranks[0], ranks[0] + len(ranks))):
        raise ValueError(f"group {ranks} is not a run of consecutive ranks")
    return Group(ranks[0], len(ranks))


SWITCH_RESPONSES = {
    202: {"description": "The switch started (state 'switching') or is queued behind the one "
                         "under way (state 'queued', with its queue_position)."},
    400: {"description": "A body this node cannot act on: malformed, no single target, a "
                         "layout or width it cannot make, an unknown strategy."},
    409: {"description": "A switch it will not take now: already_in_layout, queue_full."},
    503: {"description": "A worker has died, or the server is starting."},
}


def add_admin_routes(app: FastAPI, coordinator: Coordinator, dependencies: list) -> None:
    c = coordinator

    async def layout() -> dict:
        if c.control is None:
            raise ApiError(503, "the server is starting", type="service_unavailable", code=503)
        return {**c.health(), **c.layout_report(), "startup": c.startup}

    async def switches() -> dict:
        if c.control is None:
            raise ApiError(503, "the server is starting", type="service_unavailable", code=503)
        return c.switches_report()

    async def switch(request: Request) -> JSONResponse:
        req = parse_body(SwitchRequest, await _json(request))
        target = target_layout(req, c.cfg.num_ranks, c.cfg.engines_per_group)
        try:
            ticket = c.switch(target, req.strategy, req.split_strategy, req.reason)
        except Rejected as e:
            raise bad_request(str(e), e.param) from None
        except SwitchRefused as e:
            raise ApiError(409, str(e), code=e.code) from None
        except Unavailable as e:
            raise ApiError(503, f"the server cannot switch: {e}", type="service_unavailable",
                           code=503) from None
        return JSONResponse(c.ticket_report(ticket), status_code=202)

    app.add_api_route("/admin/layout", layout, methods=["GET"], dependencies=dependencies)
    app.add_api_route("/admin/switches", switches, methods=["GET"], dependencies=dependencies)
    app.add_api_route("/admin/switch", switch, methods=["POST"], dependencies=dependencies,
                      status_code=202, responses=SWITCH_RESPONSES,
                      description="Ask for a live switch (body: ``SwitchRequest``).")


async def _json(request: Request) -> object:
    return json_body(await request.body())
