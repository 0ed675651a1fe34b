"""Continuous batching for `forgetless serve`: requests for different adapters decoded together.

One thread owns the model. Each turn of its loop it (1) applies adapter loads and unloads, (2) lets
waiting requests join: each prompt is prefilled alone and its key/value cache appended to the
running batch's (left-padded to a common length), (3) runs one decoding step for every row at once,
each row through its own LoRA adapter (PEFT's mixed-adapter batches: `adapter_names` per row,
`__base__` for none), samples each row with its own settings, and (4) lets finished, cancelled or
timed-out rows leave. A row's answer does not depend on what else is in the batch: padded
positions are masked and every row keeps its own positions.

Adapters PEFT cannot mix in one batch (DoRA, IA3, prefix and prompt tuning, forgetless's own
formats, LoRA on fused expert weights) are generated one request at a time with `generate`, the
adapter switched on for that request alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from forgetless.deploy.chat import BASE
from forgetless.deploy.stream_text import held_back, new_text

MIN_TEMPERATURE = 1e-3  # below: logits / T overflow float32; decoded greedily (the limit)


class QueueFull(Exception):
    pass


@dataclass
class Job:
    """One request: its prompt ids, settings, and the queue its events go to (on the server's loop)."""

    adapter: str
    ids: list[int]
    max_new: int
    temperature: float = 0.0
    top_p: float = 1.0
    stops: list[str] = field(default_factory=list)
    deadline: float | None = None
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the answer's text so far (complete characters)
    decoded: tuple[int, int] = (0, 0)  # (start, read): `text` holds generated[:read]; start..read is the context
    sent: str = ""
    pending: int = 0  # the token sampled last, not yet fed to the model
    position: int = 0  # its position
    finished: bool = False
    checked: float = 0.0  # when the server last looked for the client's disconnect
    release: Callable[[], None] | None = None  # called once, when the job holds no batch row or queue slot

    def emit(self, kind: str, value) -> None:
        """("text", piece) | ("end", finish_reason) | ("error", (status, message))."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def close(self, kind: str | None = None, value=None) -> None:
        """The job's last event (if given), once; then its adapter is released. Called in the model's
        thread where the job leaves the batch or the queue, so an adapter is never unloaded while a
        row still decodes with it (a client that disconnects only asks for this, with `cancelled`)."""
        if self.finished:
            return
        self.finished = True
        if self.release is not None:
            self.release()
        if kind is not None:  # last: a client that has its answer sees the job released
            self.emit(kind, value)


def sample(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    if temperature < MIN_TEMPERATURE:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1))


class Batcher:
    def __init__(self, engine, max_batch: int, max_queue: int):
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.commands: deque = deque()  # (function, concurrent future) run between steps
        self.wake = threading.Condition()
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.mask: torch.Tensor | None = None
        self.running = True
        self.peak = 0  # the most rows decoded together so far
        self.thread = threading.Thread(target=self._loop, name="forgetless-batcher", daemon=True)
        self.thread.start()

    # ---- called from the server's event loop ----------------------------------------------
    def submit(self, job: Job) -> None:
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self.wake.notify()

    def call(self, fn):
        """Run fn() in the model's thread between two steps; returns a concurrent future (the server
        awaits it with asyncio.wrap_future)."""
        done = Future()
        with self.wake:
            self.commands.append((fn, done))
            self.wake.notify()
        return done

    def nudge(self) -> None:
        """Wake the model's thread (a waiting request was cancelled: its queue slot frees at once)."""
        with self.wake:
            self.wake.notify()

    def depth(self) -> tuple[int, int]:
        return len(self.waiting), len(self.active)

    def stop(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        self.thread.join(timeout=30)

    # ---- the model's thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.wake:
                while self.running and not (self.waiting or self.active or self.commands):
                    self.wake.wait()
                if not self.running and not self.active:
                    for job in self.waiting:  # (uvicorn drains requests before stopping us: normally none)
                        job.close("error", (503, "the server is shutting down"))
                    return
                commands, self.commands = list(self.commands), deque()
                self._sweep()
            for fn, done in commands:
                try:
                    done.set_result(fn())
                except Exception as e:  # handed to the caller, who reports it
                    done.set_exception(e)
            try:
                self._admit()
                if self.active:
                    self._step()
            except Exception as e:  # a failed step fails its rows, never the server
                for job in self.active:
                    job.close("error", (500, f"generation failed: {e}"))
                self._reset()

    def _sweep(self) -> None:
        """Waiting requests whose client left or whose deadline passed leave the queue now (with the
        lock held): they would otherwise hold queue slots, and cause 429s, until admitted."""
        if any(job.cancelled.is_set() or job.deadline is not None for job in self.waiting):
            self.waiting = deque(job for job in self.waiting if not self._expired(job))

    def _admit(self) -> None:
        """Let waiting requests join: all that fit are prefilled together, in one padded forward."""
        joining = []
        while len(self.active) + len(joining) < self.max_batch:
            with self.wake:
                if not self.waiting:
                    break
                job = self.waiting[0]
                if not self.engine.batchable() and (self.active or joining):
                    break  # a request that cannot share a batch waits for the batch to empty
                self.waiting.popleft()
            if self._expired(job):
                continue
            try:
                self.engine.ensure_loaded(job.adapter)
            except Exception as e:  # this request fails, the others go on
                job.close("error", (500, f"generation failed: {e}"))
                continue
            if not self.engine.batchable():
                if self.active or joining:  # its adapter, once loaded, cannot share: it waits, first in line
                    with self.wake:
                        self.waiting.appendleft(job)
                    break
                self._alone(job)
                return
            joining.append(job)
        if joining:
            try:
                self._prefill(joining)
            except Exception as e:  # the rows being prefilled fail; the running batch goes on
                for job in joining:
                    job.close("error", (500, f"generation failed: {e}"))

    def _forward(self, ids, mask, positions, cache, names: list[str]):
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, self.engine.cache_kw: cache}
        context = nullcontext()
        if self.engine.has_adapters() and len(set(names)) > 1:  # PEFT's per-row routing costs hooks: only when mixed
            kwargs["adapter_names"] = ["__base__" if n == BASE else n for n in names]
        elif self.engine.has_adapters():
            context = self.engine.switched_to(names[0])
        with torch.no_grad(), context:  # only the last position's logits are sampled from
            return self.engine.model(**kwargs, use_cache=True, logits_to_keep=1)

    def _prefill(self, jobs: list[Job]) -> None:
        """The prompts, left-padded to one length, through the model at once; rows that go on join."""
        width = max(len(job.ids) for job in jobs)
        pad = self.engine.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(job.ids)) + job.ids for job in jobs])
        mask = torch.tensor([[0] * (width - len(job.ids)) + [1] * len(job.ids) for job in jobs])
        cache = DynamicCache()
        out = self._forward(ids, mask, (mask.cumsum(1) - 1).clamp(min=0), cache, [job.adapter for job in jobs])
        rows = []
        for i, job in enumerate(jobs):
            job.position = len(job.ids)
            if not self._take(job, sample(out.logits[i, -1], job.temperature, job.top_p)):
                rows.append(i)
        if not rows:
            return
        index = torch.tensor(rows)
        kv = [(layer.keys[index], layer.values[index]) for layer in cache.layers]
        self._append(kv, mask[index], [jobs[i] for i in rows])

    def _append(self, kv, mask: torch.Tensor, jobs: list[Job]) -> None:
        """Add rows to the running batch, the shorter side padded on the left."""
        if self.cache is None:
            self.cache, self.mask, self.active = kv, mask, list(jobs)
            return
        ours, theirs = self.mask.shape[1], mask.shape[1]
        width = max(ours, theirs)
        self.cache = [(_pad(k, width - ours), _pad(v, width - ours)) for k, v in self.cache]
        kv = [(_pad(k, width - theirs), _pad(v, width - theirs)) for k, v in kv]
        pairs = zip(self.cache, kv, strict=True)
        self.cache = [(torch.cat([k0, k1]), torch.cat([v0, v1])) for (k0, v0), (k1, v1) in pairs]
        self.mask = torch.cat([F.pad(self.mask, (width - ours, 0)), F.pad(mask, (width - theirs, 0))])
        self.active += jobs

    def _step(self) -> None:
        self.peak = max(self.peak, len(self.active))
        ids = torch.tensor([[job.pending] for job in self.active])
        positions = torch.tensor([[job.position] for job in self.active])
        mask = torch.cat([self.mask, torch.ones(len(self.active), 1, dtype=torch.long)], dim=1)
        cache = DynamicCache(ddp_cache_data=self.cache)
        out = self._forward(ids, mask, positions, cache, [job.adapter for job in self.active])
        self.cache, self.mask = [(layer.keys, layer.values) for layer in cache.layers], mask
        keep = []
        for i, job in enumerate(self.active):
            job.position += 1
            if not self._expired(job) and not self._take(job, sample(out.logits[i, -1], job.temperature, job.top_p)):
                keep.append(i)
        if len(keep) < len(self.active):
            self._keep(keep)

    def _take(self, job: Job, token: int) -> bool:
        """Add the row's next token and send what is new; True when the row is finished."""
        job.generated.append(token)
        job.pending = token
        done = token in self.engine.eos_ids or len(job.generated) >= job.max_new
        before = len(job.text)
        piece, start, read = new_text(self.engine.tokenizer, job.generated, *job.decoded, final=done)
        job.text, job.decoded = job.text + piece, (start, read)
        text = job.text
        # a stop string not found before can only end in the new piece
        hits = [i for s in job.stops if (i := text.find(s, max(0, before - len(s) + 1))) >= 0]
        finish = None
        if hits:
            text, finish = text[: min(hits)], "stop"
        elif token in self.engine.eos_ids:
            finish = "stop"
        elif len(job.generated) >= job.max_new:
            finish = "length"
        end = len(text) if finish else len(text) - held_back(text, job.stops)
        if end > len(job.sent):
            job.emit("text", text[len(job.sent) : end])
            job.sent = text[:end]
        if finish:
            job.close("end", (finish, len(job.generated)))
        return finish is not None

    def _expired(self, job: Job) -> bool:
        if job.finished:
            return True
        if job.cancelled.is_set():
            job.close("end", ("cancelled", len(job.generated)))
        elif job.deadline is not None and time.monotonic() > job.deadline:
            job.close("error", (504, "the request timed out (the server's --request-timeout)"))
        else:
            return False
        return True

    def _keep(self, rows: list[int]) -> None:
        self.active = [self.active[i] for i in rows]
        if not rows:
            self._reset()
            return
        index = torch.tensor(rows)
        mask = self.mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0])  # columns that are padding in every remaining row go
        self.mask = mask[:, start:]
        self.cache = [(k[index, :, start:], v[index, :, start:]) for k, v in self.cache]

    def _reset(self) -> None:
        self.active, self.cache, self.mask = [], None, None

    def _alone(self, job: Job) -> None:
        """A request whose adapter cannot share a batch: `generate` with its adapter switched on,
        each token handed to _take as it comes (so it streams, stops and cancels like the others)."""

        def stop() -> bool:
            return job.finished or self._expired(job)

        try:
            self.engine.generate_alone(job, lambda token: job.finished or self._take(job, token), stop)
        except Exception as e:
            job.close("error", (500, f"generation failed: {e}"))
        if not self._expired(job):
            job.close("end", ("stop", len(job.generated)))


def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """Left-pad a [batch, heads, length, dim] cache tensor by n positions."""
    return F.pad(t, (0, 0, n, 0)) if n else t
