"""Continuous batching for `forgetless serve`: requests for different adapters decoded together.

One thread owns the model. Each turn of its loop it (1) applies adapter loads and unloads, (2) lets
waiting requests join: their prompts are prefilled together (after the chat template's shared head,
whose keys and values are made once per adapter: deploy/prefix.py) and their key/value cache appended
to the running batch's (left-padded to a common length); a prompt longer than `chunk` tokens is
prefilled a chunk per turn instead, the batch decoding between two chunks; (3) runs one decoding step
for every row at once, each row through its own LoRA adapter (every batch, mixed or not, goes through
deploy/routing.py: two matmuls per layer for all its adapters and no switch between requests; PEFT's
`adapter_names` where the adapters cannot be stacked), samples each row with its own settings, and
(4) lets finished, cancelled or timed-out rows leave. A row's answer does not depend on what else is in
the batch: padded positions are masked and every row keeps its own positions.

Adapters PEFT cannot mix in one batch (DoRA, IA3, prefix and prompt tuning, forgetless's own
formats, LoRA on fused expert weights) are generated one request at a time with `generate`, the
adapter switched on for that request alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from forgetless.deploy.chat import BASE
from forgetless.deploy.job import Job, QueueFull, sample
from forgetless.deploy.kv_room import RoomyLayer, cache_of, roomy, tensors
from forgetless.deploy.prefix import Heads, shared_head
from forgetless.deploy.routing import Router
from forgetless.deploy.stream_text import held_back, new_text


class Batcher:
    # A prompt longer than this is prefilled this many tokens per turn of the loop, the running batch taking a
    # decoding step between two chunks: one long prompt never stalls every other answer for its whole prefill.
    chunk = 256

    def __init__(self, engine, max_batch: int, max_queue: int):
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.partial: tuple[Job, DynamicCache, int] | None = None  # the long prompt being prefilled, tokens done
        self.heads = Heads(shared_head(engine.tokenizer))  # the template's common head, prefilled once per adapter
        self.router = Router()  # mixed-adapter batches: the adapters stacked, made on the first one
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.commands: deque = deque()  # (function, concurrent future) run between steps
        self.wake = threading.Condition()
        self.cache: list[RoomyLayer] | None = None  # the running batch's keys and values, room to grow in place
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
                while self.running and not (self.waiting or self.active or self.commands or self.partial):
                    self.wake.wait()
                if not self.running and not self.active and self.partial is None:
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
                if self.partial is not None:
                    self._chunk()
                if self.active:
                    self._step()
            except Exception as e:  # a failed step fails its rows, never the server
                for job in self.active:
                    job.close("error", (500, f"generation failed: {e}"))
                self._reset()

    def _sweep(self) -> None:
        """Waiting requests whose client left or deadline passed leave now (lock held), not at admission (429s)."""
        if any(job.cancelled.is_set() or job.deadline is not None for job in self.waiting):
            self.waiting = deque(job for job in self.waiting if not self._expired(job))

    def _admit(self) -> None:
        """Let waiting requests join: all that fit are prefilled together, in one padded forward."""
        joining = []
        while len(self.active) + len(joining) + (self.partial is not None) < self.max_batch:
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
            if len(job.ids) > self.chunk:  # prefilled a chunk per turn (_chunk); one such prompt at a time
                if self.partial is not None:
                    with self.wake:
                        self.waiting.appendleft(job)
                    break
                self.partial = (job, DynamicCache(), 0)
                continue
            joining.append(job)
        if joining:
            try:
                self._prefill(joining)
            except Exception as e:  # the rows being prefilled fail; the running batch goes on
                for job in joining:
                    job.close("error", (500, f"generation failed: {e}"))

    def adapters_changed(self) -> None:
        """An adapter was loaded or unloaded (in the model's thread): what was made from the old set goes."""
        self.heads.clear()
        self.router.drop()

    def warm(self) -> None:
        """In the model's thread (or before it has work): the shared head of every loaded adapter and of
        the base, and the stacked adapters, made now rather than by the first request for each (the server
        calls it at start-up and after a run-time load; with one client round-robin over adapters, each
        adapter's first request paid its head). Nothing when requests go alone (`generate` makes no head)."""
        if (head := shared_head(self.engine.tokenizer)) != self.heads.tokens:  # a first run-time adapter's template
            self.heads = Heads(head)
        if not self.engine.batchable():
            return
        if self.engine.has_adapters() and self.router.supports(model := self.engine.model) and not self.router.stacks:
            self.router.build(model)
        if self.heads.tokens:
            self.heads.rows([BASE, *self.engine.loaded], self._head)

    def _forward(self, ids, mask, positions, cache, names: list[str]):
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, self.engine.cache_kw: cache}
        context, model = nullcontext(), self.engine.model
        mixed = len(set(names)) > 1
        if self.engine.has_adapters() and self.router.supports(model):
            # every batch, one adapter or several: no set_adapter between requests for different adapters
            context = self.router.routed(model, names)
        elif self.engine.has_adapters() and mixed:  # PEFT's own per-row routing
            kwargs["adapter_names"] = ["__base__" if n == BASE else n for n in names]
        elif self.engine.has_adapters():
            context = self.engine.switched_to(names[0])
        with torch.no_grad(), context:  # only the last position's logits are sampled from
            return self.engine.model(**kwargs, use_cache=True, logits_to_keep=1)

    def _prefill(self, jobs: list[Job]) -> None:
        """The prompts, left-padded to one length, through the model at once; rows that go on join. When
        every prompt starts with the template's shared head, its cached keys and values (deploy/prefix.py)
        stand in for those positions and only the rest is computed: [head | padding | rest]."""
        heads = self.heads
        skip = heads.covers([job.ids for job in jobs])
        width = max(len(job.ids) for job in jobs) - skip
        pad = self.engine.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width + skip - len(job.ids)) + job.ids[skip:] for job in jobs])
        mask = torch.tensor([[1] * skip + [0] * (width + skip - len(job.ids)) + [1] * (len(job.ids) - skip)
                             for job in jobs])  # fmt: skip
        names = [job.adapter for job in jobs]
        cache = DynamicCache(ddp_cache_data=heads.rows(names, self._head)) if skip else DynamicCache()
        out = self._forward(ids, mask, (mask.cumsum(1) - 1).clamp(min=0)[:, skip:], cache, names)
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

    def _chunk(self) -> None:
        """The next `chunk` tokens of the long prompt being prefilled (after the shared head when it starts
        with it); when the prompt is done its first token is sampled and its row joins the batch."""
        job, cache, done = self.partial
        if self._expired(job):
            self.partial = None
            return
        try:
            if done == 0 and (skip := self.heads.covers([job.ids])):
                cache, done = DynamicCache(ddp_cache_data=self.heads.rows([job.adapter], self._head)), skip
            end = min(len(job.ids), done + self.chunk)
            out = self._forward(torch.tensor([job.ids[done:end]]), torch.ones(1, end, dtype=torch.long),
                                torch.arange(done, end)[None], cache, [job.adapter])  # fmt: skip
        except Exception as e:  # this prompt fails; the batch goes on
            self.partial = None
            job.close("error", (500, f"generation failed: {e}"))
            return
        self.partial = (job, cache, end) if end < len(job.ids) else None
        if self.partial is None:
            job.position = len(job.ids)
            if not self._take(job, sample(out.logits[0, -1], job.temperature, job.top_p)):
                kv = [(layer.keys, layer.values) for layer in cache.layers]
                self._append(kv, torch.ones(1, len(job.ids), dtype=torch.long), [job])

    def _head(self, name: str):
        """The shared head's keys and values through adapter `name`, alone."""
        cache, n = DynamicCache(), len(self.heads.tokens)
        self._forward(torch.tensor([self.heads.tokens]), torch.ones(1, n, dtype=torch.long),
                      torch.arange(n)[None], cache, [name])  # fmt: skip
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _append(self, kv, mask: torch.Tensor, jobs: list[Job]) -> None:
        """Add rows to the running batch, the shorter side padded on the left."""
        if self.cache is None:
            self.cache, self.mask, self.active = roomy(kv), mask, list(jobs)
            return
        ours, theirs = self.mask.shape[1], mask.shape[1]
        width = max(ours, theirs)
        cache = [(_pad(k, width - ours), _pad(v, width - ours)) for k, v in tensors(self.cache)]
        kv = [(_pad(k, width - theirs), _pad(v, width - theirs)) for k, v in kv]
        pairs = zip(cache, kv, strict=True)
        self.cache = roomy([(torch.cat([k0, k1]), torch.cat([v0, v1])) for (k0, v0), (k1, v1) in pairs])
        self.mask = torch.cat([F.pad(self.mask, (width - ours, 0)), F.pad(mask, (width - theirs, 0))])
        self.active += jobs

    def _step(self) -> None:
        self.peak = max(self.peak, len(self.active))
        ids = torch.tensor([[job.pending] for job in self.active])
        positions = torch.tensor([[job.position] for job in self.active])
        mask = torch.cat([self.mask, torch.ones(len(self.active), 1, dtype=torch.long)], dim=1)
        out = self._forward(ids, mask, positions, cache_of(self.cache), [job.adapter for job in self.active])
        self.mask = mask  # (the layers took the new position in place)
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
        self.cache = roomy([(k[index, :, start:], v[index, :, start:]) for k, v in tensors(self.cache)])

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
