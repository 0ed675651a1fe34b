"""The OpenAI API's shapes as forgetless serves them: the request bodies (validated; fields OpenAI
clients send that we do not use are ignored, text with lone surrogates or NULs is refused) and one
choice of an answer (chat message, streamed delta, or completion text), and the error an answer
carries (ApiError: status, OpenAI-style body). The app is serve.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


def unicode_text(value):
    """JSON may carry lone UTF-16 surrogates ("\\ud800"), which no tokenizer or UTF-8 writer accepts."""
    for text in [value] if isinstance(value, str) else value or []:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"contains a lone UTF-16 surrogate at character {e.start}; send valid Unicode") from None
    return value


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str
    _text = field_validator("content")(unicode_text)


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n=1, user, ...)
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request (send n requests for n answers)")
    _text = field_validator("model", "stop")(unicode_text)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str
    _prompt = field_validator("prompt")(unicode_text)


def no_nul(value: str) -> str:
    if "\x00" in value:  # the file system refuses it (a 500 before this check)
        raise ValueError("contains a NUL character (\\u0000), which no name or path may hold")
    return value


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str
    _text = field_validator("name", "path")(unicode_text)
    _nul = field_validator("name", "path")(no_nul)


def choice(chat: bool, text: str | None, finish: str | None, delta: bool = False) -> dict:
    """One choice of an OpenAI-style answer: chat message (or streamed delta), or completion text."""
    if not chat:
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    key = "delta" if delta else "message"
    body = {"role": "assistant", "content": text} if not delta else ({"content": text} if text else {})
    return {"index": 0, key: body, "finish_reason": finish}


class ApiError(Exception):
    """An answer with an HTTP error status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param=None, kind: str = "invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}
