"""Text <-> token ids for the server, from local files only (never the hub).

``HFTokenizer`` reads a Hugging Face tokenizer folder with the ``tokenizers`` library:
``tokenizer.json``, ``tokenizer_config.json`` (special tokens, an inline chat template) and
``chat_template.jinja`` (where transformers >= 5 saves it), plus the stop ids in
``generation_config.json`` / ``config.json``. Chat templates render with a sandboxed Jinja2
environment set up as transformers sets it up.

``ByteTokenizer`` stands in when a model has no tokenizer (dummy weights at a named shape,
for benchmarks): text is its UTF-8 bytes (ids 0..255), and ids >= 256 decode to nothing.

Without a chat template in the folder, chats use ``DEFAULT_CHAT_TEMPLATE``: one
``role: content`` line per message, then ``assistant:`` (also said by ``python -m executor
serve --help``).
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, Sequence

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


class TokenizerError(ValueError):
    """A tokenizer folder that cannot be used, or a chat the template refuses."""


class Tokenizer(Protocol):
    eos_token_ids: frozenset[int]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def render_chat(self, messages: list[dict[str, Any]]) -> str: ...


# --- chat templates ----------------------------------------------------------------------
class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str]) -> None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except TemplateError as e:
            raise TokenizerError(f"chat template does not compile: {e}") from e
        self.special_tokens = special_tokens

    def render(self, messages: list[dict[str, Any]]) -> str:
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, add_generation_prompt=True,
                                        tools=None, **self.special_tokens)
        except TemplateError as e:
            raise TokenizerError(f"the model's chat template refused these messages: {e}") from e


# --- Hugging Face folders ----------------------------------------------------------------
class HFTokenizer:
    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer as FastTokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{folder}: no tokenizer.json (only fast tokenizers are "
                                 f"supported; pass --tokenizer FOLDER to use another folder)")
        self.folder = folder
        self.backend = FastTokenizer.from_file(str(path))
        config = _read_json(folder / "tokenizer_config.json")
        self.special_tokens = {name: _token_text(config.get(name))
                               for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
        self.special_tokens = {k: v for k, v in self.special_tokens.items() if v is not None}
        self.eos_token_ids = frozenset(self._eos_ids(config))
        template = _chat_template_source(folder, config)
        self.has_chat_template = template is not None
        self.chat = ChatTemplate(template or DEFAULT_CHAT_TEMPLATE, self.special_tokens)

    def _eos_ids(self, config: dict) -> set[int]:
        """Stop ids: generation_config.json, else config.json, else the eos_token's id."""
        for name in ("generation_config.json", "config.json"):
            value = _read_json(self.folder / name).get("eos_token_id")
            if value is not None:
                return set(value) if isinstance(value, list) else {int(value)}
        eos = self.special_tokens.get("eos_token")
        token_id = self.backend.token_to_id(eos) if eos else None
        return {token_id} if token_id is not None else set()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.backend.decode(list(token_ids), skip_special_tokens=True)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return self.chat.render(messages)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from e


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template_source(folder: Path, config: dict) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


# --- no tokenizer ------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as token ids; for models without a tokenizer (needs vocab >= 256)."""

    eos_token_ids: frozenset[int] = frozenset()
    has_chat_template = False

    def __init__(self) -> None:
        self.chat = ChatTemplate(DEFAULT_CHAT_TEMPLATE, {})

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t for t in token_ids if 0 <= t < 256).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return self.chat.render(messages)


def load_tokenizer(folder: str | Path | None, vocab_size: int) -> Tokenizer:
    """The folder's tokenizer, or bytes when there is none (``folder`` None)."""
    if folder is None:
        if vocab_size < 256:
            raise TokenizerError(f"the model has no tokenizer and a vocabulary of {vocab_size} "
                                 f"< 256 ids, too small for the byte fallback; pass --tokenizer")
        return ByteTokenizer()
    return HFTokenizer(folder)
