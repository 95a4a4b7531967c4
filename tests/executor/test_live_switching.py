"""Live switching on two CPU ranks: the admin API (a switch and its record, a queued switch,
refused and invalid requests, metrics), hard preempt keeping a paused request's KV through a
TP episode, and the ``flying`` policy switching by itself under a bursty load."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import re
import threading

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from executor.admin import SwitchRequest, target_layout  # noqa: E402
from executor.openai_protocol import ApiError  # noqa: E402
from policies.layout import Group, Layout  # noqa: E402
from policies.records import SWITCH_COLUMNS  # noqa: E402
from tests.executor.serving import ServerThread, serve_config  # noqa: E402
from tests.executor.switching import (Job, http, layout, make_switch_model,  # noqa: E402
                                      serve_jobs, set_expected, settled, stream, wait_for)

API_KEY = "admin-key"
WAIT_S = 30.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_switch_model(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="module")
def server(model_dir):
    cfg = serve_config(model_dir, layout="dp", num_ranks=2, api_key=API_KEY,
                       max_queued_switches=2)
    with ServerThread(cfg) as s:
        yield s


def switch(server, body: dict) -> tuple[int, dict]:
    return http(server, "/admin/switch", body)


def switch_and_wait(server, body: dict) -> dict:
    status, answer = switch(server, body)
    assert status == 202, answer
    wait_for(lambda: settled(server), WAIT_S, f"switch {answer['switch_id']}")
    return answer


def metric(server, name: str, **labels) -> float:
    """A sample's value on /metrics (0 when absent)."""
    text = http(server, "/metrics", key=None)[1]
    want = {"model_name": server.model_name, **labels}
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if m and m.group(1) == name:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            if got == want:
                return float(m.group(3))
    return 0.0


def jobs_of(*specs: tuple[int, int]) -> list[Job]:
    """Jobs of (prompt tokens, max tokens), token ids from a fixed pattern."""
    return [Job(i, [(7 * i + 3 * k) % 290 + 5 for k in range(p)], n, 0.0)
            for i, (p, n) in enumerate(specs)]


# --- the admin API ---------------------------------------------------------------------------
def test_a_switch_is_taken_carried_out_and_recorded(server):
    jobs = jobs_of((12, 8), (40, 6), (3, 10))
    set_expected(jobs, serve_jobs(server, jobs, WAIT_S, paced=False))  # DP2, no switch
    flips = metric(server, "flying_switch_flip_seconds_count")
    merges = metric(server, "flying_switches_total", strategy="hard", kind="merge")
    status, answer = switch(server, {"layout": "tp", "strategy": "hard", "reason": "test"})
    assert status == 202 and answer["state"] in ("switching", "done"), answer
    assert (answer["to_layout"], answer["groups"], answer["reason"]) == ("1xTP2", [[0, 1]], "test")
    wait_for(lambda: settled(server), WAIT_S, "the switch to TP2")
    now = layout(server)
    assert now["layout"] == "1xTP2" and now["paused"] == {} and now["pending_switch"] is None
    assert [(g["group"], g["ranks"], g["tp_gpus"], g["state"]) for g in now["groups"]] == \
        [("e0-1", [0, 1], 2, "active")]
    answers = serve_jobs(server, jobs, WAIT_S, paced=False)  # one plan per step to both ranks
    assert [a.text for a in answers] == [j.expected_text for j in jobs]
    row = next(s for s in http(server, "/admin/switches")[1]["switches"]
               if s["switch_id"] == answer["switch_id"])
    assert set(SWITCH_COLUMNS) <= set(row) and row["state"] == "done"
    assert row["from_layout"] == "2xTP1" and row["to_layout"] == "1xTP2"
    assert 0 < row["flip_s"] < 5 and row["done_s"] >= row["ready_s"] >= row["requested_s"]
    assert metric(server, "flying_switch_flip_seconds_count") == flips + 1
    assert metric(server, "flying_switches_total", strategy="hard", kind="merge") == merges + 1
    splits = metric(server, "flying_switches_total", strategy="sequential", kind="split")
    switch_and_wait(server, {"groups": [[0], [1]]})  # back to DP, sequential by default
    assert layout(server)["layout"] == "2xTP1"
    assert metric(server, "flying_switches_total", strategy="sequential", kind="split") == \
        splits + 1
    assert server.coordinator.rank_group == {0: (0,), 1: (1,)}


def test_a_switch_asked_during_another_is_queued_and_never_lost(server):
    (long,) = jobs = jobs_of((30, 300))
    set_expected(jobs, serve_jobs(server, jobs, WAIT_S, paced=False))
    result = {}
    worker = threading.Thread(target=lambda: result.update(a=stream(server, long, WAIT_S)))
    worker.start()
    wait_for(lambda: layout(server)["groups"][0]["running"] + layout(server)["groups"][1][
        "running"], WAIT_S, "the long request to run")
    refused = metric(server, "flying_switch_refused_total", reason="queue_full")
    status, first = switch(server, {"layout": "tp", "strategy": "sequential"})  # drains
    assert status == 202 and first["state"] == "switching"
    status, second = switch(server, {"layout": "dp"})
    assert status == 202 and second["state"] == "queued" and second["queue_position"] == 0
    status, third = switch(server, {"width": 2, "strategy": "soft"})
    assert status == 202 and third["queue_position"] == 1
    status, full = switch(server, {"layout": "dp"})  # --max-queued-switches 2
    assert status == 409 and full["error"]["code"] == "queue_full", full
    assert "queued behind switch" in full["error"]["message"]
    assert metric(server, "flying_switch_refused_total", reason="queue_full") == refused + 1
    now = layout(server)
    assert now["pending_switch"]["phase"] == "draining" and now["layout"] == "2xTP1"
    assert [q["switch_id"] for q in now["queued_switches"]] == [second["switch_id"],
                                                                  third["switch_id"]]
    worker.join(WAIT_S)
    assert not worker.is_alive() and result["a"].text == long.expected_text
    wait_for(lambda: settled(server), WAIT_S, "the queued switches")
    history = {s["switch_id"]: s for s in http(server, "/admin/switches")[1]["switches"]}
    ids = (first["switch_id"], second["switch_id"], third["switch_id"])
    assert [history[i]["state"] for i in ids] == ["done", "done", "done"]
    assert [history[i]["to_layout"] for i in ids] == ["1xTP2", "2xTP1", "1xTP2"]
    assert history[ids[0]]["drain_s"] > 0  # it waited for the long request
    switch_and_wait(server, {"layout": "dp"})


@pytest.mark.parametrize("body, status, message", [
    ({"layout": "dp"}, 409, "is in layout 2xTP1 already"),
    ({"layout": "ring"}, 400, "layout: Input should be"),
    ({"layout": "tp", "strategy": "restart"}, 400, "restart is the simulator's baseline"),
    ({"layout": "tp", "strategy": "teleport"}, 400, "strategy 'teleport' is not one of"),
    ({"layout": "tp", "split_strategy": "restart"}, 400, "split_strategy 'restart'"),
    ({"groups": [[0, 2], [1]]}, 400, "not a run of consecutive ranks"),
    ({"groups": [[0]]}, 400, "do not cover engines"),
    ({"width": 3}, 400, "cannot be cut into groups of 3"),
    ({"layout": "dp", "width": 2}, 400, "exactly one of"),
    ({}, 400, "exactly one of"),
    ({"layout": "tp", "engines_per_group": 2}, 400, "goes with layout 'mixed'"),
    ({"layout": "tp", "color": "red"}, 400, "color: Extra inputs are not permitted"),
])
def test_refused_and_invalid_switches_say_why(server, body, status, message):
    got, answer = switch(server, body)
    assert got == status and message in answer["error"]["message"], answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert layout(server)["layout"] == "2xTP1" and settled(server)


def test_the_admin_api_needs_the_key_and_json(server):
    assert http(server, "/admin/switch", {"layout": "tp"}, key=None)[0] == 401
    assert http(server, "/admin/layout", key="wrong")[0] == 401
    assert http(server, "/admin/switches", key=None)[0] == 401
    status, answer = http(server, "/admin/switch", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]["message"]
    assert layout(server)["layout"] == "2xTP1"


def test_the_switch_body_is_in_the_openapi_schema(server):
    """``POST /admin/switch`` declares its body (``SwitchRequest``) in /openapi.json, with the
    constraints the handler enforces, though it parses the body itself (400s, not 422s)."""
    status, spec = http(server, "/openapi.json", key=None)
    assert status == 200
    op = spec["paths"]["/admin/switch"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    props = body["properties"]
    assert set(props) == set(SwitchRequest.model_fields) and body["additionalProperties"] is False
    assert all(p["description"] for p in props.values())
    assert (props["width"]["type"], props["width"]["minimum"]) == ("integer", 1)
    assert props["layout"]["enum"] == ["dp", "tp", "mixed"]
    assert props["strategy"]["enum"] == ["sequential", "soft", "hard"]
    assert props["split_strategy"]["enum"] == ["drain", "recompute"]
    assert props["reason"]["maxLength"] == 200
    assert len(body["oneOf"]) == 4  # exactly one target
    assert {"202", "400", "409", "503"} <= set(op["responses"]) and "422" not in op["responses"]


def test_targets_and_the_widths_a_model_allows():
    def target(**body):
        return target_layout(SwitchRequest(**body), 4, 2)

    assert target(layout="mixed") == Layout.uniform(4, 2)
    assert target(layout="mixed", engines_per_group=4) == Layout.static_tp(4)
    assert target(groups=[[2, 3], [0], [1]]).groups == (Group(2, 2), Group(0, 1), Group(1, 1))
    with pytest.raises(ApiError, match="aligned power-of-two"):
        target(groups=[[0], [1, 2], [3]])
    from executor.serve_config import ServeConfig, feasible_widths, resolve_model
    config = resolve_model(ServeConfig(model="tiny")).config  # 2 KV heads
    assert feasible_widths(config, 4) == [1, 2] and feasible_widths(config, 2) == [1, 2]


# --- hard preempt keeps the KV ---------------------------------------------------------------
def test_a_block_is_the_same_bytes_at_every_width():
    """The KV adaptor's invariant the pause relies on: block b is one byte range of the pool
    at every width, so a TP group that writes only other blocks leaves a paused request's
    width-1 KV as it was."""
    import torch

    from executor.attention import slots_of
    from executor.kv_cache import PagedKVCache

    kv = PagedKVCache(num_layers=2, num_kv_heads=4, head_dim=8, num_blocks=6,
                      block_size_tokens=4, dtype=torch.float32)
    table, positions = torch.tensor([4, 1]), torch.arange(7)  # 7 tokens in blocks 4 and 1
    written = torch.randn(2, 7, 4, 8)
    for layer in range(2):
        kv.layer(layer)[0][slots_of(table, positions, 4)] = written[layer]
    before = kv.storage[:, :, [1, 4]].clone()
    kv.set_width(2)  # a TP episode: 8 tokens of 2 KV heads per block
    others = torch.tensor([0, 2, 3, 5])
    for layer in range(2):
        k, v = kv.layer(layer)
        every = slots_of(others, torch.arange(4 * kv.tokens_per_block), kv.tokens_per_block)
        k[every], v[every] = 1.0, -1.0
    kv.set_width(1)
    assert torch.equal(kv.storage[:, :, [1, 4]], before)
    for layer in range(2):
        assert torch.equal(kv.layer(layer)[0][slots_of(table, positions, 4)], written[layer])
    assert (kv.storage[:, :, others] != 0).all()  # the episode really wrote the rest


def test_a_paused_request_keeps_its_kv_through_a_tp_episode_and_resumes_on_it(server):
    c = server.coordinator
    paused_job, other = jobs = jobs_of((90, 120), (20, 12))
    episode = jobs_of((60, 16), (9, 20), (33, 8))
    set_expected(jobs + episode, serve_jobs(server, jobs + episode, WAIT_S, paced=False))
    result = {}
    worker = threading.Thread(target=lambda: result.update(a=stream(server, paused_job,
                                                                    WAIT_S)))
    worker.start()
    rid = wait_for(lambda: next((sr.request_id for sr in c.requests.values()
                                 if sr.num_generated >= 5), None), WAIT_S, "a few tokens")
    request = c.requests[rid].request
    switch_and_wait(server, {"layout": "tp", "strategy": "hard", "reason": "episode"})
    now = layout(server)
    assert sum(now["paused"].values()) == 1 and request.pauses == 1
    blocks = list(request.block_ids)
    # Its blocks are reserved in the TP group's pool (same ids on both ranks), so the
    # episode's requests write their KV elsewhere.
    assert now["groups"][0]["kv_blocks_reserved"] == len(blocks) > 0
    computed, generated = request.num_computed_tokens, request.num_generated
    answers = serve_jobs(server, episode, WAIT_S, paced=False)
    assert [a.text for a in answers] == [j.expected_text for j in episode]
    assert request.num_generated == generated  # paused: nothing ran
    switch_and_wait(server, {"layout": "dp", "reason": "episode over"})
    worker.join(WAIT_S)
    assert not worker.is_alive() and result["a"].text == paused_job.expected_text
    # Resumed on its KV: every token computed once, none recomputed, same blocks kept.
    assert request.preemptions == 0 and request.recomputed_tokens == 0
    assert c.computed_tokens[rid] == request.prompt_tokens + request.num_generated - 1
    assert request.tp_widths == [1] and computed >= paused_job.prompt_ids.__len__()
    # A paused request whose client leaves frees its reserved blocks at once.
    worker = threading.Thread(target=lambda: result.update(b=stream(server, other, 2.0)))
    worker.start()
    rid = wait_for(lambda: next((sr.request_id for sr in c.requests.values()
                                 if sr.num_generated >= 2), None), WAIT_S, "a second request")
    switch_and_wait(server, {"layout": "tp", "strategy": "hard", "reason": "episode 2"})
    assert sum(layout(server)["paused"].values()) == 1
    worker.join(WAIT_S)  # its 2 s client time-out ends the stream: an abort
    wait_for(lambda: not layout(server)["paused"], WAIT_S, "the paused abort")
    assert layout(server)["groups"][0]["kv_blocks_reserved"] == 0
    assert rid not in c.requests and c.control.num_unfinished == 0
    switch_and_wait(server, {"layout": "dp"})


def test_soft_preempt_pre_runs_held_work_and_recomputes_its_kv_at_the_flip(server):
    c = server.coordinator
    draining, held = jobs = jobs_of((30, 200), (20, 300))
    set_expected(jobs, serve_jobs(server, jobs, WAIT_S, paced=False))
    results = {}
    first = threading.Thread(target=lambda: results.update(a=stream(server, draining, WAIT_S)))
    first.start()
    wait_for(lambda: any(sr.num_generated >= 3 for sr in c.requests.values()), WAIT_S,
             "the first request to run")
    status, soft = switch(server, {"layout": "tp", "strategy": "soft"})
    assert status == 202
    # No group admits during the switch: the next request is held, and the member that has
    # drained (the idle one) pre-runs it at width 1 while the other drains.
    second = threading.Thread(target=lambda: results.update(b=stream(server, held, WAIT_S)))
    second.start()
    rid = wait_for(lambda: next((sr.request_id for sr in c.requests.values()
                                 if sr.num_generated >= 1 and sr.request.prompt_tokens == 20),
                                None), WAIT_S, "the held request to be pre-run")
    request = c.requests[rid].request
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert results["a"].text == draining.expected_text
    assert results["b"].text == held.expected_text
    wait_for(lambda: settled(server), WAIT_S, "the soft switch")
    row = next(s for s in http(server, "/admin/switches")[1]["switches"]
               if s["switch_id"] == soft["switch_id"])
    assert row["prerun_requests"] == 1 and row["preempted_requests"] == 1
    # Its narrow-width KV was dropped at the flip and computed again at width 2.
    assert request.tp_widths == [1, 2] and request.preemptions == 1
    assert row["recomputed_tokens"] == request.recomputed_tokens > 20
    assert c.computed_tokens[rid] == \
        request.prompt_tokens + request.num_generated - 1 + request.recomputed_tokens
    switch_and_wait(server, {"layout": "dp"})


# --- a policy switching by itself --------------------------------------------------------------
def flying(model_dir, *rules: str, **settings) -> ServerThread:
    cfg = serve_config(model_dir, policy="flying", num_ranks=2, api_key=API_KEY,
                       policy_overrides=rules, sample_period_s=0.1, **settings)
    return ServerThread(cfg)


def test_flying_merges_at_low_load_and_splits_on_a_burst(model_dir, server):
    quiet = jobs_of((10, 6), (25, 8))
    burst = [Job(i + 2, [(5 * i + 3 * k) % 290 + 5 for k in range(8 + 5 * (i % 7))],
                 4 + (i % 5) * 6, 0.0) for i in range(36)]
    set_expected(quiet + burst, serve_jobs(server, quiet + burst, WAIT_S, paced=False))
    with flying(model_dir, "flying.dwell_s=0.3", "flying.min_interval_s=0.3",
                "flying.split_dwell_s=0.2", "flying.high_queue_per_engine=1.0",
                max_num_seqs=4) as live:
        now = layout(live)
        assert now["layout"] == "2xTP1" and now["dynamic"] and now["policy"] == "flying"
        # Low load: the policy merges the node into one TP group after its dwell.
        wait_for(lambda: layout(live)["layout"] == "1xTP2", WAIT_S, "a low-load merge")
        answers = serve_jobs(live, quiet, WAIT_S, paced=False)
        # A burst: a backlog above 1 queued request per engine splits it back to DP.
        answers += serve_jobs(live, burst, WAIT_S, paced=False)
        assert [a.text for a in answers] == [j.expected_text for j in quiet + burst]
        wait_for(lambda: settled(live), WAIT_S, "the policy's switches to end")
        history = http(live, "/admin/switches")[1]["switches"]
        reasons = [s["reason"] for s in history]
        assert any(r.startswith("low load") for r in reasons), reasons
        assert any(r.startswith("backlog") for r in reasons), reasons
        assert all(s["state"] == "done" for s in history)
        assert metric(live, "flying_switches_total", strategy="soft", kind="merge") >= 1
        c = live.coordinator
        assert c.control.num_unfinished == 0 and not c.requests
        for r in c.control.requests:
            assert c.computed_tokens[r.request_id] == \
                r.prompt_tokens + r.num_generated - 1 + r.recomputed_tokens


def test_flying_forms_a_priority_group_by_hard_preempt_and_resumes_the_paused(model_dir,
                                                                             server):
    normal = jobs_of((40, 150), (22, 150))
    (urgent,) = jobs_of((14, 10))
    urgent.index, urgent.priority = 2, "priority"
    set_expected(normal + [urgent], serve_jobs(server, normal + [urgent], WAIT_S, paced=False))
    # No load rule in this test (a dwell longer than it runs): the class rules alone.
    with flying(model_dir, "flying.dwell_s=1000", "flying.class_idle_s=0.3",
                "flying.min_interval_s=0.3") as live:
        c = live.coordinator
        results: dict[int, object] = {}
        workers = [threading.Thread(target=lambda j=j: results.update({j.index: stream(
            live, j, WAIT_S)})) for j in normal]
        for w in workers:
            w.start()
        wait_for(lambda: sum(sr.num_generated >= 3 for sr in c.requests.values()) == 2,
                 WAIT_S, "both normal requests to run, one per engine")
        results[urgent.index] = stream(live, urgent, WAIT_S)
        for w in workers:
            w.join(WAIT_S)
        assert [results[j.index].text for j in normal + [urgent]] == \
            [j.expected_text for j in normal + [urgent]]
        wait_for(lambda: settled(live) and layout(live)["layout"] == "2xTP1", WAIT_S,
                 "the priority group to be released")
        history = http(live, "/admin/switches")[1]["switches"]
        formed, released = history[0], history[-1]
        assert formed["strategy"] == "hard" and "priority request" in formed["reason"]
        assert formed["to_layout"] == "1xTP2" and formed["paused_requests"] == 2
        assert released["reason"] == "priority group idle" and released["state"] == "done"
        for r in c.control.requests:
            if r.request_class == "normal":  # resumed on their KV after the episode
                assert (r.pauses, r.preemptions, r.recomputed_tokens) == (1, 0, 0)
                assert c.computed_tokens[r.request_id] == r.prompt_tokens + r.num_generated - 1
            else:
                assert r.tp_widths == [2]


def test_slo_aware_runs_live_on_the_measured_step_costs(model_dir, server):
    load = [Job(i, [(11 * i + k) % 290 + 5 for k in range(6 + 4 * i)], 12, 0.0)
            for i in range(8)]
    (urgent,) = jobs_of((14, 10))
    urgent.index, urgent.priority = 8, "priority"
    set_expected(load + [urgent], serve_jobs(server, load + [urgent], WAIT_S, paced=False))
    cfg = serve_config(model_dir, policy="slo_aware", num_ranks=2, api_key=API_KEY,
                       policy_overrides=("flying.class_idle_s=0.3",
                                         "flying.min_interval_s=0.3"), sample_period_s=0.1)
    with ServerThread(cfg) as live:
        c = live.coordinator
        assert c.control.dynamic and c.control.cost_model is c.step_costs
        answers = serve_jobs(live, load, WAIT_S, paced=False)
        assert [a.text for a in answers] == [j.expected_text for j in load]
        assert 1 in c.step_costs.measured_widths
        # It scores every uniform layout (about once a second) on the measured costs.
        policy = c.control.policy
        wait_for(lambda: set(policy.last_scores) == {"1", "2"}, WAIT_S, "a layout evaluation")
        assert all(0.0 <= s <= 1.0 for s in policy.last_scores.values())
        wait_for(lambda: settled(live), WAIT_S, "its switches, if any, to end")
        # Its class rules are flying's: a priority request gets a TP group by hard preempt.
        switches_before = len(c.control.switches)
        assert stream(live, urgent, WAIT_S).text == urgent.expected_text
        wait_for(lambda: settled(live) and layout(live)["layout"] == "2xTP1", WAIT_S,
                 "the priority group to be released")
        reasons = [s.reason for s in c.control.switches[switches_before:]]
        assert any("priority request" in r for r in reasons), reasons
