"""The trace replay client (``python -m executor replay``) against our server in-process on
a small synthetic trace: every request recorded in the simulator's format, prompts of exact
token counts, clipping to the context, failures recorded with their reason, and clear
errors for an unreachable server, a wrong model and bad config values."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402

from analysis.load import load_requests, load_run  # noqa: E402
from executor.replay import (CONF_DIR, Outcome, ReplayError, ServerCounter,  # noqa: E402
                             ServerInfo, clip_lengths, make_counter, run_replay)
from executor.replay_config import (PromptConfig, ReplayConfigError, load_config,  # noqa: E402
                                    register_schema)
from executor.replay_prompts import PromptSynthesizer, byte_counter, hf_counter  # noqa: E402
from policies.records import RECORD_COLUMNS  # noqa: E402
from tests.executor.serving import (ServerThread, free_port, make_served_model,  # noqa: E402
                                    serve_config)
from traces import load_trace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 128
# ~16 Poisson arrivals over 2 s; prompts up to 160 tokens, so some exceed the context.
TRACE = ["+trace=poisson", "trace.rate_rps=8", "trace.duration_s=2", "trace.lengths.kind=uniform",
         "trace.lengths.prompt_tokens=4", "trace.lengths.prompt_tokens_max=160",
         "trace.lengths.output_tokens=2", "trace.lengths.output_tokens_max=12"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_served_model(tmp_path_factory.mktemp("replay_model"))


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerThread(serve_config(model_dir, max_model_len=MAX_MODEL_LEN)) as s:
        yield s


def replay_config(*overrides: str):
    """conf/replay.yaml composed with ``overrides``, typed and checked."""
    register_schema()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("replay", overrides=["output.progress=false", "output.print_summary=false",
                                           *overrides])
    return load_config(cfg)


def server_overrides(server, model_dir) -> list[str]:
    return [f"server.base_url={server.url}/v1", f"prompt.tokenizer={model_dir}"]


# --- against our server ----------------------------------------------------------------------
def test_replay_records_every_request_in_the_simulators_format(server, model_dir, tmp_path):
    cfg = replay_config(*TRACE, *server_overrides(server, model_dir), "rate_scale=2")
    specs = load_trace(cfg.trace)
    doc = run_replay(cfg, tmp_path)

    run = load_run(tmp_path)  # analysis reads it as it reads a simulator run
    df, details = run["requests"], pd.read_parquet(tmp_path / "replay.parquet")
    assert list(df.columns) == list(RECORD_COLUMNS) and set(df.backend) == {"replay"}
    assert sorted(df.request_id) == [s.request_id for s in specs] and len(df) >= 5
    assert set(df.status) == {"finished"} and df.reject_reason.isna().all()
    # rate_scale=2 halves every arrival time; the client sends on schedule.
    assert details.scheduled_s.tolist() == pytest.approx([s.arrival_s for s in specs])
    assert (details.send_lag_s >= 0).all() and (details.send_lag_s < 1.0).all()
    # Lengths: clipped to the context, prompts exact, outputs as long as asked.
    clipped = [clip_lengths(s.prompt_tokens, s.output_tokens, MAX_MODEL_LEN) for s in specs]
    assert df.prompt_tokens.tolist() == [p for p, _, _ in clipped]
    assert df.output_tokens.tolist() == [o for _, o, _ in clipped]
    assert (df.generated_tokens == df.output_tokens).all()
    assert details.prompt_exact.all() and (details.prompt_tokens_server == df.prompt_tokens).all()
    assert doc["replay"]["clipped"] == sum(c for _, _, c in clipped) > 0
    assert ((df.prompt_tokens + df.output_tokens) <= MAX_MODEL_LEN).all()
    # Times: ordered and consistent; one timestamped chunk per generated token.
    assert (df.arrival_s <= df.first_token_s).all() and (df.first_token_s <= df.finish_s).all()
    assert (df.ttft_s > 0).all() and (df.ttft_s <= df.e2e_s).all()
    many = df.generated_tokens > 1
    assert (df.tpot_s[many] > 0).all() and df.tpot_s[~many].isna().all()
    assert (details.token_chunks == df.generated_tokens).all()
    for times, first in zip(details.chunk_times_s, df.first_token_s):
        assert times[0] == first and list(times) == sorted(times)
    # The summary: the simulator's metrics, what was replayed, and against what.
    assert doc["metrics"]["all"]["finished"] == len(df) and doc["metrics"]["all"]["ttft_mean_s"] > 0
    assert doc["run"]["backend"] == "replay" and doc["run"]["target"] == "executor"
    assert doc["run"]["max_model_len"] == MAX_MODEL_LEN and doc["run"]["layout"] == "1xTP1"
    assert json.loads((tmp_path / "summary.json").read_text())["replay"]["sent"] == len(df)
    assert load_requests(tmp_path).run_backend.eq("replay").all()


def test_failures_are_recorded_with_their_reason_never_dropped(server, model_dir, tmp_path):
    # A context limit above the server's: the long requests come back HTTP 400.
    cfg = replay_config(*TRACE, *server_overrides(server, model_dir), "server.max_model_len=4096")
    n = len(load_trace(cfg.trace))
    doc = run_replay(cfg, tmp_path)
    df = load_run(tmp_path)["requests"]
    assert sorted(df.request_id) == list(range(n))
    too_long = df.prompt_tokens + df.output_tokens > MAX_MODEL_LEN
    assert too_long.any() and (~too_long).any()
    assert set(df.status[too_long]) == {"rejected"} and set(df.status[~too_long]) == {"finished"}
    assert df.reject_reason[too_long].str.startswith("HTTP 400: ").all()
    assert df.reject_reason[too_long].str.contains("maximum context length").all()
    assert math.isnan(df.ttft_s[too_long].iloc[0]) and doc["replay"]["rejected"] == too_long.sum()
    assert doc["metrics"]["all"]["rejected"] == too_long.sum()


def test_requests_still_streaming_at_the_drain_timeout_are_unfinished(server, model_dir,
                                                                      tmp_path):
    cfg = replay_config(*server_overrides(server, model_dir), "+trace=poisson",
                        "trace.rate_rps=20", "trace.duration_s=0.3", "trace.lengths.kind=fixed",
                        "trace.lengths.prompt_tokens=8", "trace.lengths.output_tokens=100",
                        "drain_timeout_s=0.05")
    doc = run_replay(cfg, tmp_path)
    df = load_run(tmp_path)["requests"]
    cut = df[df.status != "finished"]
    assert len(cut) > 0 and doc["run"]["completed"] and set(cut.status) == {"unfinished"}
    assert cut.reject_reason.str.contains("drain_timeout_s").all()
    assert doc["replay"]["unfinished"] == len(cut) and cut.finish_s.isna().all()


def test_max_concurrency_caps_the_requests_in_flight(server, model_dir, tmp_path):
    cfg = replay_config(*server_overrides(server, model_dir), "+trace=poisson",
                        "trace.rate_rps=200", "trace.duration_s=0.05", "trace.lengths.kind=fixed",
                        "trace.lengths.prompt_tokens=8", "trace.lengths.output_tokens=6",
                        "max_concurrency=2")
    run_replay(cfg, tmp_path)
    df = load_run(tmp_path)["requests"]
    details = pd.read_parquet(tmp_path / "replay.parquet")
    assert len(df) >= 5 and set(df.status) == {"finished"}
    in_flight = [((df.arrival_s <= t) & (df.finish_s > t)).sum() for t in df.arrival_s]
    assert max(in_flight) <= 2
    assert details.send_lag_s.max() > 0.01  # the others waited for a slot, and it shows


def test_a_wrong_model_name_is_a_clear_error(server, model_dir, tmp_path):
    cfg = replay_config(*TRACE, *server_overrides(server, model_dir), "server.model=nope")
    with pytest.raises(ReplayError, match=f"does not serve model 'nope'; it serves: "
                                          f"{server.model_name}"):
        run_replay(cfg, tmp_path)


# --- errors without a server -----------------------------------------------------------------
def test_an_unreachable_server_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    cfg = replay_config(*TRACE, f"server.base_url={url}", "server.connect_timeout_s=2")
    with pytest.raises(ReplayError, match="cannot reach the server at .*Is it running"):
        run_replay(cfg, tmp_path)
    # The command line: one line on stderr, exit status 2, no traceback.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "executor", "replay", *TRACE,
                        f"server.base_url={url}", f"hydra.run.dir={tmp_path / 'cli'}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "error: cannot reach the server" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_bad_config_values_are_clear_errors():
    with pytest.raises(ReplayConfigError) as e:
        replay_config(*TRACE, "rate_scale=0", "max_concurrency=0", "duration_s=-1",
                      "server.base_url=localhost:8000", "prompt.tokenizer=/no/such/folder")
    for key in ("rate_scale", "max_concurrency", "duration_s", "server.base_url",
                "prompt.tokenizer"):
        assert key in str(e.value)
    # Wrong types and unknown keys fail earlier, when Hydra composes the config.
    with pytest.raises(ConfigCompositionException, match="max_requests"):
        replay_config(*TRACE, "max_requests=abc")
    with pytest.raises(ConfigCompositionException, match="bogus"):
        replay_config(*TRACE, "server.bogus=1")


def test_the_command_needs_a_trace():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "executor", "replay"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "+trace=NAME" in p.stderr


# --- prompts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["hf", "bytes"])
def test_prompts_have_exactly_the_asked_token_count(model_dir, which):
    counter = hf_counter(model_dir) if which == "hf" else byte_counter()
    synthesizer = PromptSynthesizer(counter, seed=7)
    targets = [*range(1, 80), 200, 511, 2000]
    prompts = [synthesizer.synthesize(rid, t) for rid, t in enumerate(targets)]
    for target, prompt in zip(targets, prompts):
        assert prompt.exact and prompt.tokens == target == counter.count(prompt.text), target
    # Seeded per request: different requests, different prompts (no shared prefix to
    # cache); the same request, the same prompt.
    long = [p.text for p in prompts if len(p.text) > 40]
    assert len({t[:20] for t in long}) > 0.9 * len(long)
    assert synthesizer.synthesize(3, 50) == PromptSynthesizer(counter, seed=7).synthesize(3, 50)


def test_clipping_keeps_the_output_and_at_least_one_token_each():
    assert clip_lengths(100, 20, None) == (100, 20, False)
    assert clip_lengths(100, 20, 128) == (100, 20, False)
    assert clip_lengths(200, 20, 128) == (108, 20, True)
    assert clip_lengths(50, 500, 128) == (1, 127, True)
    assert clip_lengths(0, 0, 128) == (1, 1, False)


def test_the_servers_tokenize_endpoint_counts_when_it_has_one():
    def vllm_like(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/tokenize":
            return httpx.Response(404, json={"error": {"message": "Not Found"}})
        body = json.loads(request.content)
        return httpx.Response(200, json={"count": 1 + len(body["prompt"].split()),
                                         "max_model_len": 64})

    info = ServerInfo("http://vllm/v1", "m", "vllm", 64, "server")
    with httpx.Client(transport=httpx.MockTransport(vllm_like)) as client:
        counter = make_counter(PromptConfig(tokenizer="auto"), info, client)
        assert isinstance(counter, ServerCounter) and counter.count("a b c") == 4
        prompt = PromptSynthesizer(counter).synthesize(0, 30)
        assert prompt.exact and len(prompt.text.split()) == 29
        # Without /tokenize: auto falls back to an estimate, 'server' refuses.
        other = ServerInfo("http://vllm/elsewhere/v1", "m", "vllm", 64, "server")
        assert make_counter(PromptConfig(tokenizer="auto"), other, client).exact is False
        with pytest.raises(ReplayError, match="no working /tokenize"):
            make_counter(PromptConfig(tokenizer="server"), other, client)


# --- the SSE stream --------------------------------------------------------------------------
def feed(out: Outcome, *lines: str) -> Outcome:
    for i, line in enumerate(lines):
        if not out.on_line(line, float(i)):
            break
    return out


def chunk(text: str | None, reason: str | None = None, usage: dict | None = None) -> str:
    body = {"choices": [] if text is None else [{"index": 0, "text": text,
                                                  "finish_reason": reason}]}
    if usage:
        body["usage"] = usage
    return "data: " + json.dumps(body)


def test_sse_chunks_are_timed_as_tokens_and_the_end_is_checked():
    usage = {"prompt_tokens": 5, "completion_tokens": 3}
    out = feed(Outcome(send_s=0.0), "", chunk("a"), "", chunk(""), chunk("b"),
               chunk("", "length"), chunk(None, usage=usage), "data: [DONE]")
    assert out.status() == ("finished", None) and out.chunk_times_s == [1.0, 3.0, 4.0]
    assert (out.first_token_s, out.finish_s, out.generated_tokens) == (1.0, 5.0, 3)
    # vLLM puts the last token and its finish reason in one chunk.
    out = feed(Outcome(send_s=0.0), chunk("a"), chunk("b", "length"), "data: [DONE]")
    assert out.chunk_times_s == [0.0, 1.0] and out.finish_s == 1.0
    # An error in the stream, a stream cut short, an answer never sent.
    out = feed(Outcome(send_s=0.0), chunk("a"), 'data: {"error": {"message": "worker died"}}')
    assert out.status() == ("unfinished", "error in the stream: worker died")
    out = feed(Outcome(send_s=0.0), "data: not json")
    assert out.status()[0] == "rejected" and "malformed" in out.status()[1]
    assert feed(Outcome(send_s=0.0), chunk("a")).status() == (
        "unfinished", "the stream ended without [DONE] (disconnected)")
    assert Outcome().status()[0] == "unfinished"
    # Given up on by the client before its first token: in flight, not refused.
    assert Outcome(send_s=0.0, error="timeout", cut_off=True).status() == ("unfinished",
                                                                           "timeout")
