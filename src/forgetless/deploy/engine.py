"""The model behind `forgetless serve`: its adapters (loaded at start or at run time, least recently
used unloaded beyond a limit and reloaded on demand), request checks, and the batcher that owns
the model's thread. Every change to the model happens in that thread, between decoding steps."""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from peft import PeftModel
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from forgetless.adapters import saved
from forgetless.adapters.saved import (
    OWN_FORMAT,
    activate,
    adapter_dir,
    adapter_template,
    base_of,
    load_several,
    method_of,
    use_adapter_templates,
)
from forgetless.adapters.views import base_view
from forgetless.config.schema import ModelConfig
from forgetless.deploy.batcher import Batcher
from forgetless.deploy.chat import BASE
from forgetless.deploy.job import MIN_TEMPERATURE, Job
from forgetless.deploy.openai_schemas import ApiError
from forgetless.errors import UserError
from forgetless.model import loader as models

CHARS_PER_TOKEN = 16  # no tokenizer averages more characters per token: longer prompts are refused unread
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Metrics:
    def __init__(self):
        self.requests = self.errors = self.rejected = self.timeouts = self.cancelled = self.tokens = 0
        self.latencies: deque[float] = deque(maxlen=10_000)
        self.started = time.monotonic()

    def quantile(self, q: float) -> float | None:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    def prometheus(self, engine: Engine) -> str:
        waiting, active = engine.batcher.depth()
        rows = [
            ("requests_total", "counter", "POST /v1/* requests answered", self.requests),
            ("errors_total", "counter", "answers with a 4xx or 5xx status", self.errors),
            ("rejected_total", "counter", "requests refused with 429 (queue full)", self.rejected),
            ("timeouts_total", "counter", "requests past --request-timeout", self.timeouts),
            ("cancelled_total", "counter", "requests whose client disconnected", self.cancelled),
            ("completion_tokens_total", "counter", "tokens generated", self.tokens),
            ("queue_depth", "gauge", "requests waiting for a batch row", waiting),
            ("batch_rows", "gauge", "requests being decoded", active),
            ("adapters_loaded", "gauge", "adapters in memory", len(engine.loaded)),
        ]
        out = []
        for name, kind, help_text, value in rows:
            name = f"forgetless_{name}"
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        out += ["# HELP forgetless_latency_seconds request latency", "# TYPE forgetless_latency_seconds summary"]
        for q in (0.5, 0.95, 0.99):
            value = self.quantile(q)
            out.append(f'forgetless_latency_seconds{{quantile="{q}"}} {"NaN" if value is None else round(value, 4)}')
        out += [f"forgetless_latency_seconds_count {len(self.latencies)}", ""]
        return "\n".join(out)


class Engine:
    def __init__(
        self,
        base_ref: str | None,
        adapters: dict[str, str],
        max_tokens: int,
        max_prompt_tokens: int,
        max_batch: int = 8,
        max_queue: int = 64,
        request_timeout: float | None = None,
        adapter_root: str | None = None,
        max_adapters: int | None = None,
    ):
        for flag, value in (("--max-batch", max_batch), ("--max-queue", max_queue), ("--max-adapters", max_adapters)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value}: must be at least 1")
        dirs = {name: adapter_dir(ref) for name, ref in adapters.items()}
        if BASE in dirs:
            raise UserError(f"adapter name '{BASE}' is reserved for the model without adapters")
        if max_adapters is not None and len(dirs) > max_adapters:
            raise UserError(f"{len(dirs)} adapters given, above --max-adapters {max_adapters}")
        base_ref = base_ref or (base_of(next(iter(dirs.values()))) if dirs else None) or "smollm2-135m-instruct"
        self.model, self.tokenizer, _ = models.load(ModelConfig(name=base_ref))
        use_adapter_templates(self.tokenizer, dirs.values())
        if dirs:
            self.model = load_several(self.model, dirs)
        self.model.eval()
        self.base_ref = base_ref
        self.adapters: dict[str, Path] = dict(dirs)  # every adapter a request may name
        self.paths: dict[str, Path] = dict(dirs)  # where to reload each from (kept while it unloads)
        self.inflight: Counter[str] = Counter()  # requests accepted and not released, per adapter
        self.lock = threading.Lock()  # inflight: counted up in the server's loop, down in the model's thread
        self.busy: set[str] = set()  # adapter names being loaded or removed at run time
        self.loaded: OrderedDict[str, None] = OrderedDict((n, None) for n in dirs)  # in memory, LRU first
        self.root = Path(adapter_root).resolve() if adapter_root else None
        self.max_adapters = max_adapters
        self.max_tokens, self.max_prompt_tokens, self.request_timeout = max_tokens, max_prompt_tokens, request_timeout
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id} - {None}
        # transformers 5 renames the forward's past_key_values to cache (and warns about the old name)
        forward = self.model.get_base_model().forward if isinstance(self.model, PeftModel) else self.model.forward
        self.cache_kw = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        self.batcher = Batcher(self, max_batch, max_queue)
        # In the model's thread, before any request: run in this (the server's main) thread, it gave it a second
        # OpenMP team, and one client's 8-token answer took 0.63-0.69 s, not 0.47 (serve_llamacpp.py, 2-core Xeon).
        self.batcher.call(self.batcher.warm).result()

    @property
    def names(self) -> list[str]:
        return [BASE, *self.adapters]

    # ---- requests --------------------------------------------------------------------------
    def job(self, req, prompt: str, chat: bool = True) -> Job:
        """The request as a batcher job, or an ApiError saying what is wrong with it. A chat prompt is
        rendered by the template, which writes the BOS its model needs; a plain completion prompt gets
        the tokenizer's special tokens (Llama-3 and Gemma degrade without their BOS)."""
        if req.model not in self.adapters and req.model != BASE:
            raise ApiError(404, f"model '{req.model}' does not exist; available: {', '.join(self.names)}", "model")
        max_new = req.max_tokens or min(256, self.max_tokens)
        if max_new > self.max_tokens:
            raise ApiError(400, f"max_tokens {max_new} is above this server's limit of {self.max_tokens}", "max_tokens")
        where = "messages" if hasattr(req, "messages") else "prompt"
        limit = self.max_prompt_tokens
        if len(prompt) > CHARS_PER_TOKEN * limit:  # refused before tokenizing: a request cannot make us allocate
            raise ApiError(400, f"the prompt has {len(prompt)} characters; this server accepts at most {limit} tokens",
                           where)  # fmt: skip
        bos = self.tokenizer.bos_token
        special = not chat and not (bos and prompt.startswith(bos))
        ids = self.tokenizer(prompt, add_special_tokens=special)["input_ids"]
        if len(ids) > limit:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this server accepts at most {limit}", where)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4 or any(len(s) > 200 for s in stops):
            raise ApiError(400, "stop: at most 4 strings of at most 200 characters (as the OpenAI API)", "stop")
        if any(not s for s in stops):
            raise ApiError(400, "stop: an empty string would end every answer before it starts; leave it out", "stop")
        return Job(req.model, ids, max_new, req.temperature, req.top_p, stops)

    def hold(self, job: Job) -> None:
        """Count the job against its adapter until the batcher releases it (Job.close, in the model's
        thread, once its row or queue slot is gone): only then may the adapter be unloaded."""
        with self.lock:
            self.inflight[job.adapter] += 1

        def release() -> None:
            with self.lock:
                self.inflight[job.adapter] -= 1

        job.release = release

    def in_use(self, name: str) -> bool:
        """Whether an accepted request for this adapter still holds a queue slot or a batch row."""
        with self.lock:
            return self.inflight[name] > 0

    @contextmanager
    def changing(self, name: str):
        """One POST or DELETE of an adapter name at a time: a second one meanwhile gets 409 (a POST
        during a DELETE would load weights into the adapter that in-flight requests are using)."""
        if name in self.busy:
            raise ApiError(409, f"adapter '{name}' is being loaded or removed; try again when that has finished",
                           "name")  # fmt: skip
        self.busy.add(name)
        try:
            yield
        finally:
            self.busy.discard(name)

    # ---- the model's thread ----------------------------------------------------------------
    def batchable(self) -> bool:
        """Whether requests can share a batch, a row per adapter: the adapters loaded are plain LoRA, or none."""
        if not isinstance(self.model, PeftModel):
            return not self.loaded  # a plain model; forgetless's own formats change it and go alone
        return all(
            c.peft_type.value == "LORA" and not c.use_dora and not getattr(c, "target_parameters", None)
            for c in self.model.peft_config.values()
        )

    def has_adapters(self) -> bool:
        return isinstance(self.model, PeftModel) and bool(self.loaded)

    def ensure_loaded(self, name: str) -> None:
        if name == BASE:
            return
        if name not in self.loaded:  # unloaded by the limit: back on demand
            self._load(name, self.paths[name])
        self.loaded.move_to_end(name)

    def _load(self, name: str, directory: Path) -> None:
        self.batcher.adapters_changed()
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(directory), adapter_name=name)
        else:  # a PEFT adapter wraps the model; forgetless's own formats change it (check_new_adapter)
            self.model = saved.load(self.model, directory, adapter_name=name)
        self.model.eval()
        self.loaded[name] = None
        self._evict()

    def _evict(self) -> None:
        while isinstance(self.model, PeftModel) and self.max_adapters and len(self.loaded) > self.max_adapters:
            idle = next((n for n in self.loaded if not self.in_use(n)), None)
            if idle is None:
                return  # every loaded adapter is answering a request: over the limit until one finishes
            self._unload(idle)

    def _unload(self, name: str) -> None:
        self.batcher.adapters_changed()
        del self.loaded[name]
        if not isinstance(self.model, PeftModel):  # a forgetless result changed the weights: the base again
            self.model, _, _ = models.load(ModelConfig(name=self.base_ref))
            self.model.eval()
        elif not self.loaded:
            self.model = self.model.unload()  # the base back, without adapter layers
        else:
            self.model.delete_adapter(name)

    def switched_to(self, name: str):
        """A context in which the model answers as `name` alone (the base: adapters off)."""
        if name == BASE:
            return base_view(self.model) if self.loaded else nullcontext()
        if isinstance(self.model, PeftModel) and self.model.active_adapter != name:  # set_adapter: 80 ms
            activate(self.model, name)
        return nullcontext()

    def generate_alone(self, job: Job, on_token, stop) -> None:
        """One request with `generate`, its adapter switched on for it alone."""
        context = self.switched_to(job.adapter)
        sample = job.temperature >= MIN_TEMPERATURE
        settings = {"temperature": job.temperature, "top_p": job.top_p} if sample else {}
        with torch.no_grad(), context:
            self.model.generate(
                input_ids=torch.tensor([job.ids]),
                max_new_tokens=job.max_new,
                do_sample=sample,
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=_Tokens(on_token),
                stopping_criteria=StoppingCriteriaList([_Until(stop)]),
                **settings,
            )

    # ---- adapters at run time (called from the server's event loop) ------------------------
    def check_new_adapter(self, name: str, path: str) -> Path:
        if not NAME.match(name or "") or name == BASE:
            raise ApiError(400, f"adapter name {name!r}: letters, digits, '.', '_', '-' (not '{BASE}')", "name")
        if name in self.adapters:
            raise ApiError(409, f"adapter '{name}' is already loaded; DELETE /v1/adapters/{name} first", "name")
        resolved = Path(path).expanduser().resolve()
        if self.root is not None and not resolved.is_relative_to(self.root):
            raise ApiError(403, f"path {path} is outside the server's --adapter-root {self.root}", "path")
        try:
            directory = adapter_dir(str(resolved))
        except UserError as e:
            raise ApiError(400, str(e), param="path") from None
        # adapter_dir may step into RUN/adapter, and a link there (or to a file in it) may lead out
        inside = [directory.resolve(), *(p.resolve() for p in directory.iterdir())]
        if self.root is not None and not all(p.is_relative_to(self.root) for p in inside):
            raise ApiError(403, f"{directory} links outside the server's --adapter-root {self.root}", "path")
        self._check_origin(directory)
        if self.loaded and not isinstance(self.model, PeftModel):
            raise ApiError(400, f"a forgetless result ({', '.join(self.loaded)}) changed this model and serves alone; "
                           "DELETE it first", "path")  # fmt: skip
        if (directory / OWN_FORMAT).is_file():
            if self.adapters:
                raise ApiError(
                    400,
                    f"{directory} is a forgetless {method_of(directory)} result, which changes the model itself: "
                    f"it serves alone (DELETE {', '.join(self.adapters)} first)",
                    "path",
                )
            return directory
        if isinstance(self.model, PeftModel):
            theirs = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))["peft_type"]
            ours = {c.peft_type.value for c in self.model.peft_config.values()}
            if ours and {theirs} != ours:
                raise ApiError(400, f"{directory} is {theirs}; this server's adapters are {', '.join(ours)}", "path")
        return directory

    def _check_origin(self, directory: Path) -> None:
        """A run-time adapter must come from this server's base model and render prompts with the
        template this server uses (all adapters share one tokenizer); the first one sets the template."""
        base = base_of(directory)
        if base is not None and not models.same_model(base, self.base_ref):
            raise ApiError(400, f"{directory} was trained on {base}; this server's base model is {self.base_ref}",
                           "path")  # fmt: skip
        template = adapter_template(directory)
        if template is not None and self.adapters and template != self.tokenizer.chat_template:
            raise ApiError(400, f"{directory} was trained with another chat template than the adapters served here "
                           f"({', '.join(self.adapters)}); serve it on a server of its own", "path")  # fmt: skip

    def register(self, name: str, directory: Path) -> None:
        """In the model's thread: load it now (errors reach the caller), then answer requests for it."""
        self._load(name, directory)
        if not self.adapters:  # the first adapter: prompts are rendered as it was trained (as at start-up)
            use_adapter_templates(self.tokenizer, [directory])
        self.adapters[name] = self.paths[name] = directory
        self.batcher.warm()

    def check_removable(self, name: str) -> None:
        if name not in self.adapters:
            raise ApiError(404, f"adapter '{name}' is not loaded; loaded: {', '.join(self.adapters) or 'none'}")

    def forget(self, name: str) -> None:
        """In the model's thread, once no request uses it (requests stopped naming it before)."""
        self.paths.pop(name, None)
        if name in self.loaded:
            self._unload(name)


class _Tokens(BaseStreamer):
    """Hands generate's new tokens one by one to the batcher (the first put is the prompt)."""

    def __init__(self, on_token):
        self.on_token, self.prompt_seen = on_token, False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.on_token(token)

    def end(self) -> None:
        pass


class _Until(StoppingCriteria):
    def __init__(self, stop):
        self.stop = stop

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.stop()
