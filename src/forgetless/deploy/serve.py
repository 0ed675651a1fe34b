"""`forgetless serve`: one base model and any number of named adapters behind an OpenAI-compatible API.

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with
`stream: true` as server-sent events), GET /health, GET /metrics. The request's `model` picks
an adapter by name, or `base` for the model without adapters.

Requests queue on one lock and are generated one at a time: switching adapters is a change of
module state, so one request's adapter can never leak into another's answer; the generation
thread itself holds the model while it runs, so a client that disconnects mid-stream (which
cancels its request) cannot hand the model to the next request before its generation has left it,
and its generation stops at the next token. (Batching requests together is not done yet.)
With no API key configured the server binds to 127.0.0.1 only; with a key (`--api-key` or
FORGETLESS_API_KEY), a request without `Authorization: Bearer KEY` gets 401. Bad requests get a
4xx with an OpenAI-style error body.

For GPU-scale multi-LoRA serving, the same adapter directories (plain PEFT format) load in
vLLM: `vllm serve BASE --enable-lora --lora-modules support=runs/a/adapter legal=runs/b/adapter`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections import deque
from contextlib import nullcontext

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from forgetless.adapters.methods import base_view
from forgetless.adapters.saved import activate, adapter_dir, base_of, load_several, use_adapter_templates
from forgetless.config.schema import ModelConfig
from forgetless.data.render import prompt_text
from forgetless.deploy.chat import BASE
from forgetless.errors import UserError
from forgetless.model import loader as models


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


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


# Below this temperature, logits / temperature overflow float32 and sampling divides by infinity;
# the distribution is already its limit, the most likely token: such requests are decoded greedily.
MIN_TEMPERATURE = 1e-3


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n=1, user, ...)
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    _text = field_validator("model", "stop")(unicode_text)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str
    _prompt = field_validator("prompt")(unicode_text)


class Cancelled(StoppingCriteria):
    """Stop when the request is gone (its client disconnected)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


class StopOnText(StoppingCriteria):
    """Stop as soon as the generated text contains one of the stop strings."""

    def __init__(self, tokenizer, start: int, stops: list[str]):
        self.tokenizer, self.start, self.stops = tokenizer, start, stops

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        text = self.tokenizer.decode(input_ids[0, self.start :], skip_special_tokens=True)
        return any(s in text for s in self.stops)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.index(s) for s in stops if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


class Metrics:
    def __init__(self):
        self.requests = self.errors = self.tokens = 0
        self.generate_seconds = 0.0
        self.latencies: deque[float] = deque(maxlen=10_000)

    def snapshot(self) -> dict:
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        return {
            "requests": self.requests,
            "errors": self.errors,
            "completion_tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.generate_seconds, 1) if self.generate_seconds else None,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99)},
        }


class Engine:
    """The model, its adapters, and one-at-a-time generation."""

    def __init__(self, base_ref: str | None, adapters: dict[str, str], max_tokens: int, max_prompt_tokens: int):

        dirs = {name: adapter_dir(ref) for name, ref in adapters.items()}
        if BASE in dirs:
            raise UserError(f"adapter name '{BASE}' is reserved for the model without adapters")
        base_ref = base_ref or (base_of(next(iter(dirs.values()))) if dirs else None) or "smollm2-135m-instruct"
        self.model, self.tokenizer, _ = models.load(ModelConfig(name=base_ref))
        use_adapter_templates(self.tokenizer, dirs.values())
        if dirs:
            self.model = load_several(self.model, dirs)
        self.model.eval()
        self.base_ref, self.names = base_ref, [BASE, *dirs]
        self.max_tokens, self.max_prompt_tokens = max_tokens, max_prompt_tokens
        self.lock = asyncio.Lock()  # the queue: one request at a time
        self.model_lock = threading.Lock()  # held by the generating thread, which may outlive its request
        self.metrics = Metrics()

    def check(self, req: Sampling, prompt: str) -> tuple[dict, list[str], int]:
        """(encoded prompt, stop strings, max new tokens), or an ApiError saying what is wrong."""
        if req.model not in self.names:
            raise ApiError(
                404, f"model '{req.model}' does not exist; available: {', '.join(self.names)}", param="model"
            )
        max_new = req.max_tokens or min(256, self.max_tokens)
        if max_new > self.max_tokens:
            raise ApiError(
                400, f"max_tokens {max_new} is above this server's limit of {self.max_tokens}", param="max_tokens"
            )
        enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        n = enc["input_ids"].shape[1]
        if n > self.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt has {n} tokens; this server accepts at most {self.max_prompt_tokens}",
                param="messages",
            )
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        return enc, stops, max_new

    def _adapter(self, name: str):
        """Select the request's adapter; the base is the same model with adapters switched off."""
        if name == BASE:
            return base_view(self.model) if len(self.names) > 1 else nullcontext()
        activate(self.model, name)
        return nullcontext()

    def _kwargs(self, req: Sampling, enc: dict, stops: list[str], max_new: int, streamer=None, cancel=None) -> dict:
        sample = req.temperature >= MIN_TEMPERATURE
        kwargs = {
            **{k: v.to(self.model.device) for k, v in enc.items()},
            "max_new_tokens": max_new,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": sample,
            "streamer": streamer,
        }
        if sample:
            kwargs |= {"temperature": req.temperature, "top_p": req.top_p}
        criteria = [StopOnText(self.tokenizer, enc["input_ids"].shape[1], stops)] if stops else []
        criteria += [Cancelled(cancel)] if cancel is not None else []
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        return kwargs

    def _run(self, name: str, kwargs: dict) -> torch.Tensor:
        with self.model_lock, torch.no_grad(), self._adapter(name):
            return self.model.generate(**kwargs)

    def _run_streaming(self, name: str, kwargs: dict, failure: list) -> None:
        """The streaming worker: a failed generation still ends the stream (else the reader waits forever)."""
        try:
            self._run(name, kwargs)
        except Exception as e:  # reported to the client by stream(); the thread must not die silently
            failure.append(e)
            kwargs["streamer"].end()

    async def complete(self, req: Sampling, prompt: str) -> tuple[str, str, int, int]:
        """(text, finish_reason, prompt tokens, completion tokens)."""
        enc, stops, max_new = self.check(req, prompt)
        async with self.lock:
            t0 = time.perf_counter()
            out = await asyncio.to_thread(self._run, req.model, self._kwargs(req, enc, stops, max_new))
            self.metrics.generate_seconds += time.perf_counter() - t0
        new = out[0, enc["input_ids"].shape[1] :]
        text, stopped = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), stops)
        limit = not stopped and new.numel() >= max_new
        self.metrics.tokens += new.numel()
        return text, "length" if limit else "stop", enc["input_ids"].shape[1], int(new.numel())

    async def stream(self, req: Sampling, prompt: str):
        """Text pieces as they are generated (the lock is held until the last one)."""
        enc, stops, max_new = self.check(req, prompt)
        async with self.lock:
            t0 = time.perf_counter()
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            cancel, failure = threading.Event(), []
            kwargs = self._kwargs(req, enc, stops, max_new, streamer, cancel)
            worker = threading.Thread(target=self._run_streaming, args=(req.model, kwargs, failure))
            worker.start()
            sent = ""
            try:
                while (piece := await asyncio.to_thread(next, streamer, None)) is not None:
                    text, stopped = cut_at_stop(sent + piece, stops)
                    if text[len(sent) :]:
                        yield text[len(sent) :]
                    sent = text
                    if stopped:
                        break
                if failure:
                    raise ApiError(500, f"generation failed: {failure[0]}", "server_error")
            finally:
                cancel.set()  # a dropped client: its generation stops at the next token
                await asyncio.to_thread(worker.join)  # may be cancelled: model_lock still guards the model
                self.metrics.generate_seconds += time.perf_counter() - t0
                self.metrics.tokens += len(self.tokenizer(sent, add_special_tokens=False)["input_ids"])


def _choice(chat: bool, text: str | None, finish: str | None, delta: bool = False) -> dict:
    """One choice of an OpenAI-style answer: chat message (or streamed delta), or completion text."""
    if not chat:
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
    key = "delta" if delta else "message"
    body = {"role": "assistant", "content": text} if not delta else ({"content": text} if text else {})
    return {"index": 0, key: body, "finish_reason": finish}


async def respond(engine: Engine, req: Sampling, prompt: str, chat: bool):
    """The answer to a chat or completion request: one JSON body, or a server-sent event stream."""
    rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
    kind = "chat.completion" if chat else "text_completion"
    if req.stream:
        engine.check(req, prompt)  # validate before the 200 status line goes out
        head = {"id": rid, "object": kind + (".chunk" if chat else ""), "created": created, "model": req.model}

        async def events():
            try:
                async for piece in engine.stream(req, prompt):
                    yield f"data: {json.dumps(head | {'choices': [_choice(chat, piece, None, delta=True)]})}\n\n"
            except ApiError as e:  # the 200 status line has gone out: the error travels as an event
                yield f"data: {json.dumps(e.body())}\n\n"
                return
            yield f"data: {json.dumps(head | {'choices': [_choice(chat, None, 'stop', delta=True)]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    text, finish, n_prompt, n_new = await engine.complete(req, prompt)
    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}
    head = {"id": rid, "object": kind, "created": created, "model": req.model}
    return head | {"choices": [_choice(chat, text, finish)], "usage": usage}


def create_app(engine: Engine, api_key: str | None):
    app = FastAPI(title="forgetless", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def auth_and_metrics(request: Request, call_next):
        t0 = time.perf_counter()
        if api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                engine.metrics.errors += 1
                err = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
                return JSONResponse(err.body(), status_code=401)
        response = await call_next(request)
        if request.url.path.startswith("/v1/") and request.method == "POST":
            engine.metrics.requests += 1
            engine.metrics.errors += response.status_code >= 400
            engine.metrics.latencies.append(time.perf_counter() - t0)
        return response

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        message = "malformed JSON body" if first.get("type") == "json_invalid" else f"{where}: {first.get('msg')}"
        return JSONResponse(ApiError(400, message, param=where).body(), status_code=400)

    @app.get("/health")
    async def health():
        return {"status": "ok", "base_model": engine.base_ref, "models": engine.names, "queued": engine.lock.locked()}

    @app.get("/metrics")
    async def metrics():
        return engine.metrics.snapshot()

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": now, "owned_by": "forgetless"} for n in engine.names],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        messages = [m.model_dump() for m in req.messages]
        if messages[-1]["role"] == "assistant":
            raise ApiError(400, "the last message must be from the user (or system)", param="messages")
        prompt = prompt_text(engine.tokenizer, messages)
        return await respond(engine, req, prompt, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        if not req.prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        return await respond(engine, req, req.prompt, chat=False)

    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run(
    base_ref: str | None,
    adapters: dict[str, str],
    host: str,
    port: int,
    api_key: str | None = None,
    max_tokens: int = 512,
    max_prompt_tokens: int = 2048,
) -> None:
    """Serve until interrupted. Without a key (argument or FORGETLESS_API_KEY) only on loopback."""

    key = api_key or os.environ.get("FORGETLESS_API_KEY")
    if not key and host not in LOOPBACK:
        raise UserError(f"host {host} exposes the server beyond this machine: set --api-key or FORGETLESS_API_KEY")
    engine = Engine(base_ref, adapters, max_tokens, max_prompt_tokens)
    print(f"[forgetless] serving {', '.join(engine.names)} on http://{host}:{port}/v1", flush=True)
    uvicorn.run(create_app(engine, key), host=host, port=port, log_level="warning")
