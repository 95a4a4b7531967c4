"""Token-by-token text: incremental detokenization and stop conditions."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import random

import pytest

from executor.output_text import IncrementalDetokenizer, OutputText
from executor.tokenizer import ByteTokenizer, HFTokenizer
from tests.executor.serving import make_tokenizer_folder


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    make_tokenizer_folder(folder)
    return HFTokenizer(folder)


def _stream(tokenizer, prompt, ids, **kw):
    out = OutputText(tokenizer, prompt, max_tokens=kw.pop("max_tokens", len(ids)), **kw)
    deltas, reason = [], None
    for t in ids:
        text, reason = out.add(t)
        deltas.append(text)
        if reason:
            break
    return out, deltas, reason


def test_incremental_text_equals_decoding_all_generated_ids(bpe):
    # Random ids split characters across tokens (byte-level BPE); a prompt may end inside a
    # character. Streaming must still add up to decode(generated ids).
    rng = random.Random(0)
    vocab = bpe.backend.get_vocab_size()
    for _ in range(500):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(1, 8))]
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        detok = IncrementalDetokenizer(bpe, prompt)
        text = "".join(detok.push(t) for t in ids) + detok.flush()
        assert text == bpe.decode(ids), (prompt, ids)


def test_a_split_character_is_held_until_complete():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, list(b"x"))
    euro = list("€".encode())  # three bytes
    assert [detok.push(b) for b in euro] == ["", "", "€"]


def test_stop_string_across_tokens_is_cut_and_never_streamed(bpe):
    ids = bpe.encode("Hello world! How are you today?", add_special_tokens=False)
    out, deltas, reason = _stream(bpe, [5], ids, stop=("are you",))
    assert reason == "stop"
    assert out.text == "Hello world! How "
    assert "".join(deltas) == out.text  # nothing of the stop string was released


def test_stop_token_ends_without_its_text(bpe):
    ids = bpe.encode("Hello world", add_special_tokens=False) + [1] + \
        bpe.encode(" more", add_special_tokens=False)
    out, deltas, reason = _stream(bpe, [5], ids, stop_token_ids=frozenset({1}))
    assert (reason, out.text, out.num_tokens) == ("stop", "Hello world",
                                                  len(ids) - len(bpe.encode(" more", False)))


def test_length_releases_everything_held(bpe):
    ids = bpe.encode("Hello world! How", add_special_tokens=False)
    out, deltas, reason = _stream(bpe, [5], ids, stop=("zzzzzz",), max_tokens=len(ids))
    assert reason == "length"
    assert out.text == "".join(deltas) == "Hello world! How"
