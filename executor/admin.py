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

All handlers run on the event loop that owns the control plane.
"""
from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from executor.coordinator import Coordinator, Rejected, SwitchRefused, Unavailable
from executor.openai_protocol import ApiError, bad_request, parse_body
from policies.layout import Group, Layout


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layout: Literal["dp", "tp", "mixed"] | None = None
    engines_per_group: int | None = Field(default=None, ge=1)
    width: int | None = Field(default=None, ge=1)
    groups: list[list[int]] | None = None
    strategy: str = "sequential"
    split_strategy: str | None = None
    reason: str = Field(default="admin", max_length=200)


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
    app.add_api_route("/admin/switch", switch, methods=["POST"], dependencies=dependencies)


async def _json(request: Request) -> object:
    import json

    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
