"""Static layouts over two gloo ranks serve the same greedy text as one engine: DP=2 (two
engines, concurrent requests spread over both) and TP=2 (one group, identical plans on both
ranks), and mixed (2 x TP2 on four ranks)."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from executor.tokenizer import HFTokenizer  # noqa: E402
from policies.layout import Layout  # noqa: E402
from policies.policy import Decision  # noqa: E402
from tests.executor.serving import ServerThread, direct_greedy, make_served_model, \
    serve_config  # noqa: E402

PROMPTS = ["Hello world!", "The quick brown fox", "Tensor parallel groups split",
           "How are you today?", "A tiny model answers", "Flying Serving switches"]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_served_model(tmp_path_factory.mktemp("served_model"))


@pytest.fixture(scope="module")
def expected(model_dir):
    """Each prompt's greedy text from one engine, alone (no server)."""
    tok = HFTokenizer(model_dir)
    return [tok.decode(direct_greedy(model_dir, tok.encode(p), MAX_TOKENS)) for p in PROMPTS]


def serve_concurrently(server: ServerThread) -> list[str]:
    client = server.client()

    def one(prompt: str) -> str:
        out = client.completions.create(model=server.model_name, prompt=prompt,
                                        max_tokens=MAX_TOKENS, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == MAX_TOKENS
        return out.choices[0].text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(one, PROMPTS))


def groups(server: ServerThread) -> dict[str, dict]:
    return {g["group"]: g for g in server.coordinator.groups_report()}


def test_dp2_serves_concurrent_requests_like_one_engine(model_dir, expected):
    with ServerThread(serve_config(model_dir, layout="dp", num_ranks=2)) as server:
        assert serve_concurrently(server) == expected
        used = groups(server)
        assert set(used) == {"e0", "e1"} and all(g["steps"] > 0 for g in used.values())
        assert server.coordinator.startup["layout"] == "2xTP1"


def test_tp2_over_gloo_serves_the_same_text_as_one_engine(model_dir, expected):
    with ServerThread(serve_config(model_dir, layout="tp", num_ranks=2)) as server:
        assert serve_concurrently(server) == expected
        assert set(groups(server)) == {"e0-1"}
        startup = server.coordinator.startup
        assert startup["layout"] == "1xTP2" and set(startup["lazy_group_create_s"]) == {"0-1"}


def test_mixed_2x_tp2_on_four_ranks(model_dir, expected):
    with ServerThread(serve_config(model_dir, layout="mixed", num_ranks=4,
                                   engines_per_group=2)) as server:
        assert serve_concurrently(server) == expected
        assert set(groups(server)) == {"e0-1", "e2-3"}
        # The pool holds every candidate: 2 groups of two ranks and the whole node.
        assert set(server.coordinator.startup["lazy_group_create_s"]) == {"0-1", "2-3", "0-3"}


def test_kv_pressure_preempts_and_recomputes_without_changing_outputs(model_dir, expected):
    # 24 blocks of 4 tokens: each request alone fits, six at once do not, so the scheduler
    # preempts (recompute) and the coordinator re-sends prompt + generated tokens.
    block_bytes = 2 * 4 * 2 * 16 * 4 * 4  # K,V x layers x kv heads x head_dim x tokens x fp32
    cfg = serve_config(model_dir, kv_cache_mib=24 * block_bytes / 2**20)
    with ServerThread(cfg) as server:
        assert server.coordinator.startup["kv_blocks_per_rank"] == 24
        assert serve_concurrently(server) == expected
        assert sum(r.preemptions for r in server.coordinator.control.requests) > 0


def test_the_listener_flips_an_idle_node_from_dp2_to_tp2(model_dir, expected):
    # Static layouts never switch; this drives the control plane's switch once, on an idle
    # node, to check the Listener path a live switch will take: start_flip re-points both
    # workers (SetWidth from the communicator pool), finish_flip retires e0 and e1 and
    # starts e0-1, and the new group serves the same text.
    with ServerThread(serve_config(model_dir, layout="dp", num_ranks=2)) as server:
        c = server.coordinator

        async def switch() -> None:
            c.control.request_switch(Decision(Layout.static_tp(2), "hard", "test"), c.now())
            while c.control.pending is not None:
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(switch(), c.loop).result(timeout=30)
        assert set(groups(server)) == {"e0-1"} and c.rank_group == {0: (0, 1), 1: (0, 1)}
        assert c.control.switches[0].flip_s > 0  # measured, not the modelled constant
        assert serve_concurrently(server) == expected
