"""Progress of the running phase: what core and plugins announce while they work (fine-tune steps, a scoring
pass, gate training, evaluation batches, latency timing), for whoever shows it.

A phase is a ``with`` block; ``step()`` (or ``step(n)``) counts its work::

    from harness import progress

    with progress.phase("L0 gate training", total=steps) as step:
        for batch in batches:
            ...
            step()

Phases nest (a cell, then its evaluation); a listener sees the whole stack of
open phases, outermost first, and a display shows the innermost. Nobody listens
by default (tests, ``import harness`` from a script, Ray workers): then a phase
costs a function call and ``step`` does nothing. The listener is a context
variable, set by ``harness bench`` around its work (:func:`listening`), never
module-level state; a unit in a child process sends its phases to the parent
over its pipe, which hands them on with :func:`relay`.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Protocol, TypeVar

Event = Literal["start", "advance", "end"]
T = TypeVar("T")


@dataclass(frozen=True)
class Phase:
    """One open phase as a listener sees it: its name, how much work it has (None: unknown), how much is done
    and how long it has run, in seconds (measured where it runs, so it survives a trip to another process)."""

    name: str
    total: int | None
    done: int
    elapsed: float


# A listener gets the event and the stack of open phases, outermost first; the phase the event is about is last.
Listener = Callable[[Event, "tuple[Phase, ...]"], None]


class Step(Protocol):
    """What a phase yields: ``step()`` counts one unit of work done, ``step(n)`` counts n."""

    def __call__(self, count: int = 1) -> None: ...


class _Open:
    """A running phase: mutable, never handed out (listeners get :class:`Phase` snapshots)."""

    __slots__ = ("name", "total", "done", "started")

    def __init__(self, name: str, total: int | None) -> None:
        self.name, self.total, self.done, self.started = name, total, 0, time.monotonic()

    def snapshot(self, now: float) -> Phase:
        return Phase(self.name, self.total, self.done, now - self.started)


_listener: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("harness_progress_listener", default=None)
_open: contextvars.ContextVar[tuple[_Open, ...]] = contextvars.ContextVar("harness_progress_open", default=())


def _ignore(count: int = 1) -> None:
    """``step`` while nobody listens."""


def _tell(listener: Listener, event: Event, frames: tuple[_Open, ...]) -> None:
    now = time.monotonic()
    listener(event, tuple(frame.snapshot(now) for frame in frames))


@contextmanager
def phase(name: str, total: int | None = None) -> Iterator[Step]:
    """Announce ``name`` (with ``total`` units of work, or None) while the block runs; yields ``step(count=1)``.

    The phase ends when the block does, also when it raises.
    """
    listener = _listener.get()
    if listener is None:
        yield _ignore
        return
    frame = _Open(name, total)
    token = _open.set((*_open.get(), frame))

    def step(count: int = 1) -> None:
        frame.done += count
        _tell(listener, "advance", _open.get())

    _tell(listener, "start", _open.get())
    try:
        yield step
    finally:
        frames = _open.get()
        _tell(listener, "end", frames[: frames.index(frame) + 1] if frame in frames else (*frames, frame))
        _open.reset(token)


def ticking(items: Iterable[T], step: Step) -> Iterator[T]:
    """``items``, calling ``step()`` each time the consumer comes back for the next one: one finished step per item
    (an optimizer step per training batch, counted when the loop asks for the next batch)."""
    for item in items:
        yield item
        step()


@contextmanager
def forwards(model: object, step: Step) -> Iterator[None]:
    """Inside the block, ``step()`` after each forward pass of ``model`` (a ``torch.nn.Module``): batches counted
    where the loop is not yours (an evaluation, a calibration pass). No hook at all while nobody listens."""
    handle = model.register_forward_hook(lambda *_: step()) if active() else None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def active() -> bool:
    """Whether anyone listens here (a child process sends its phases only then)."""
    return _listener.get() is not None


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every phase announced inside the block (in this thread or task) to ``listener``."""
    token, opened = _listener.set(listener), _open.set(())
    try:
        yield
    finally:
        _open.reset(opened)
        _listener.reset(token)


def relay(event: Event, phases: tuple[Phase, ...]) -> None:
    """Hand phases announced elsewhere (a unit's child process) to this context's listener, under its open ones."""
    listener = _listener.get()
    if listener is not None:
        now = time.monotonic()
        listener(event, (*(frame.snapshot(now) for frame in _open.get()), *phases))


def throttled(listener: Listener, interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> Listener:
    """``listener`` for every start and end, but for at most one ``advance`` per ``interval`` seconds: a
    training loop's thousands of steps must not flood a pipe or redraw a terminal line each time."""
    last = [float("-inf")]

    def relay_some(event: Event, phases: tuple[Phase, ...]) -> None:
        now = clock()
        if event != "advance" or now - last[0] >= interval:
            last[0] = now
            listener(event, phases)

    return relay_some
