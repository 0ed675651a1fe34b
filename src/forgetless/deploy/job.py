"""A request as the batcher sees it: its prompt ids and settings, the events it sends back to the server's
loop, and how its next token is drawn."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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
