"""Helpers of the serving tests: a tiny served model folder (random Llama + a byte-level BPE
tokenizer trained here), an in-process server on a free loopback port, and the engine's
direct greedy output to compare the server against."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from executor.serve_config import ServeConfig

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Flying Serving switches between data and tensor parallelism online.",
    "Hello world! How are you today? I am fine, thank you.",
    "A tiny model answers every prompt with random tokens.",
    "Tensor parallel groups split each weight matrix across ranks.",
]
# A chat template in tokenizer_config.json (the pre-transformers-5 place for it).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
BOS, EOS = "<s>", "</s>"
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0


def make_tokenizer_folder(folder: Path, vocab_size: int = 300) -> dict[str, int]:
    """Byte-level BPE (GPT-2 style) trained on ``SENTENCES``; returns its vocab size and
    special ids. Writes tokenizer.json and tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(SENTENCES * 4, trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A",
                                                       special_tokens=[(BOS, bos_id)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "chat_template": CHAT_TEMPLATE}))
    return {"vocab_size": tok.get_vocab_size(), "bos": bos_id, "eos": eos_id}


def make_served_model(folder: Path) -> Path:
    """A random tiny Llama (tests.executor.helpers.TINY, wide init) whose vocabulary is the
    tokenizer's, saved by transformers with the tokenizer beside it."""
    from tests.executor.helpers import make_hf_model, save_hf

    ids = make_tokenizer_folder(folder)
    model = make_hf_model("llama", seed=3, vocab_size=ids["vocab_size"],
                          bos_token_id=ids["bos"], eos_token_id=ids["eos"])
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.bos_token_id = ids["bos"]
    return save_hf(model, folder)


def direct_greedy(folder: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """What the engine generates for one request alone: one ``ModelRunner``, no server,
    no scheduler (tests.executor.helpers.Driver)."""
    from tests.executor.helpers import Driver, blocks_for_tokens, make_runner

    num_blocks = blocks_for_tokens(len(prompt_ids) + max_new_tokens, 4)
    driver = Driver(make_runner(folder, num_blocks=num_blocks, block_size_tokens=4))
    driver.add(0, prompt_ids, max_new_tokens, list(range(num_blocks)))
    return driver.run()[0]


def serve_config(model: Path | str, **overrides) -> ServeConfig:
    """Small, quick settings for CPU tests: one thread per rank, a 16 MiB KV pool."""
    settings = dict(layout="dp", num_ranks=1, threads_per_rank=1, kv_cache_mib=16.0,
                    block_size_tokens=4, max_num_seqs=16, max_num_batched_tokens=512,
                    startup_timeout_s=STARTUP_TIMEOUT_S, step_timeout_s=30.0,
                    collective_timeout_s=30.0, sample_period_s=0.2)
    settings.update(overrides)
    return ServeConfig(model=str(model), **settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """``create_app`` under uvicorn in a background thread, on a socket bound to a free
    loopback port. A context manager: always shut down (workers included) on exit."""

    def __init__(self, cfg: ServeConfig) -> None:
        import uvicorn

        from executor.serve_config import resolve_model
        from executor.server import create_app
        from executor.tokenizer import load_tokenizer

        model = resolve_model(cfg)
        self.app = create_app(cfg, model, load_tokenizer(model.tokenizer_folder,
                                                         model.config.vocab_size))
        self.coordinator = self.app.state.coordinator
        self.model_name = model.served_name
        self.api_key = cfg.api_key
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server failed to start (see the log above)")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise TimeoutError(f"the server did not start within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=SHUTDOWN_TIMEOUT_S)
        if self.coordinator.pool is not None:
            self.coordinator.pool.kill()  # no-op after a clean shutdown; a backstop if not
        self.socket.close()

    def client(self, **options):
        import openai

        options = {"api_key": self.api_key or "none", "max_retries": 0, "timeout": 60.0,
                   **options}
        return openai.OpenAI(base_url=f"{self.url}/v1", **options)
