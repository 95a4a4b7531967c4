"""Tokenizer folders read from local files only: tokenizer.json, special tokens, stop ids,
chat templates (inline or chat_template.jinja), and the byte fallback."""
from tests.executor import requirements  # noqa: F401, I001  (first: skips without the extra)

import json

import pytest

from executor.tokenizer import (DEFAULT_CHAT_TEMPLATE, ByteTokenizer, HFTokenizer,
                                TokenizerError, load_tokenizer)
from tests.executor.serving import make_tokenizer_folder


def test_folder_tokenizer_round_trips_and_adds_bos(tmp_path):
    ids = make_tokenizer_folder(tmp_path)
    tok = HFTokenizer(tmp_path)
    encoded = tok.encode("Hello world!")
    assert encoded[0] == ids["bos"] and tok.decode(encoded) == "Hello world!"
    assert tok.encode("Hello", add_special_tokens=False)[0] != ids["bos"]
    assert tok.eos_token_ids == {ids["eos"]}  # from tokenizer_config's eos_token
    chat = tok.render_chat([{"role": "user", "content": "hi"}])
    assert chat == "<s><|user|>hi\n<|assistant|>" and tok.has_chat_template


def test_stop_ids_prefer_generation_config_and_jinja_template_file(tmp_path):
    make_tokenizer_folder(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 7]}))
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    tok = HFTokenizer(tmp_path)
    assert tok.eos_token_ids == {1, 7}
    assert tok.render_chat([{"role": "user", "content": "hey"}]) == "hey!"


def test_template_errors_and_missing_files_are_tokenizer_errors(tmp_path):
    make_tokenizer_folder(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('no system role') }}")
    with pytest.raises(TokenizerError, match="no system role"):
        HFTokenizer(tmp_path).render_chat([{"role": "system", "content": "x"}])
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        HFTokenizer(tmp_path / "nowhere")


def test_byte_fallback():
    tok = load_tokenizer(None, vocab_size=512)
    assert isinstance(tok, ByteTokenizer) and tok.encode("hé") == [104, 195, 169]
    assert tok.decode([104, 195, 169, 300]) == "hé"  # ids beyond bytes decode to nothing
    assert "assistant:" in DEFAULT_CHAT_TEMPLATE
    with pytest.raises(TokenizerError, match="256"):
        load_tokenizer(None, vocab_size=100)
