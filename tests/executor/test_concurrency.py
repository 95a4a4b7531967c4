"""Many clients at once: 100 concurrent streaming completions on the tiny model (more than
the scheduler's sequence cap, so some queue) all finish with every token, and the server is
healthy and idle afterwards."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import asyncio
import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.executor.serving import ServerThread, serve_config  # noqa: E402

CLIENTS = 100
MAX_TOKENS = 6
MAX_NUM_SEQS = 32  # below CLIENTS: the rest wait in the scheduler's queue


@pytest.fixture(scope="module")
def server():
    # The named shape 'tiny': dummy weights and the byte tokenizer, nothing to write first.
    with ServerThread(serve_config("tiny", max_num_seqs=MAX_NUM_SEQS, kv_cache_mib=32.0)) as s:
        yield s


async def stream_completion(client: httpx.AsyncClient, model: str, i: int) -> dict:
    """One streamed completion: its token chunks, finish reason and usage."""
    body = {"model": model, "prompt": f"client {i}: hello there", "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    result = {"status": None, "tokens": 0, "finish_reason": None, "usage": None, "done": False}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        result["status"] = response.status_code
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                result["done"] = True
                break
            chunk = json.loads(line[len("data: "):])
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                if choice["finish_reason"] is None:
                    result["tokens"] += 1
                else:
                    result["finish_reason"] = choice["finish_reason"]
            result["usage"] = chunk.get("usage") or result["usage"]
    return result


async def many_clients(url: str, model: str) -> list[dict]:
    # One connection per client (no pooling limit), so all 100 streams are open at once.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        return await asyncio.gather(*(stream_completion(client, model, i)
                                      for i in range(CLIENTS)))


def test_100_concurrent_streaming_clients_all_complete(server):
    results = asyncio.run(many_clients(server.url, server.model_name))
    assert len(results) == CLIENTS
    for r in results:
        assert r["status"] == 200 and r["done"] and r["finish_reason"] == "length", r
        assert r["tokens"] == MAX_TOKENS == r["usage"]["completion_tokens"], r
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    groups = httpx.get(f"{server.url}/admin/layout").json()["groups"]
    assert sum(g["running"] + g["waiting"] + g["kv_blocks_used"] for g in groups) == 0
    # The server counted every request as finished.
    records = [r for r in server.coordinator.control.requests if r.num_generated]
    assert len(records) >= CLIENTS
