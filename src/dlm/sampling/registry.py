"""Samplers as records, and the one resolver that turns a request into a checked plan.

A `SamplerRecord` says everything the layers above need to know about a sampler, so that none
of them keeps a list of sampler names: its function, its knobs (type, range, default, help),
its default temperature and its properties. `resolve` validates a `SamplerRequest` against
the record and the process once, with one set of messages, and returns a `Plan`; `run_plan`
(dlm.sampling.run) executes it. The CLI (`dlm generate|infill`, whose flags are made from the
knobs), the server (whose request fields are made from the knobs), the bench and the lm-eval
adapter all go through `resolve`.

Adding a sampler: write its function (one file), add its record to `RECORDS` below, and list
its name in the `samplers` of the processes it can sample. tests/test_registry.py checks that
every record's knobs are keywords of its function and reachable from the CLI and the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from dlm.errors import DlmError
from dlm.sampling.ancestral import sample_ancestral
from dlm.sampling.autoregressive import sample_autoregressive
from dlm.sampling.block import sample_blocks
from dlm.sampling.confidence import CACHE_MODES, CONFIDENCE_RULES, sample_confidence
from dlm.sampling.gaussian import sample_ddim, sample_ddpm
from dlm.sampling.remasking import REMASKING_SCHEDULES, sample_remdm
from dlm.sampling.speculative import sample_speculative


@dataclass(frozen=True)
class Knob:
    """One keyword a sampler takes from its user. `option` is how users spell it (CLI flag
    `--option-with-dashes`, request field `option`); `name` is the function's keyword."""
    name: str
    kind: type  # int, float or str
    help: str
    low: float | None = None  # bounds of a number (inclusive unless low_open)
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    option: str = ""  # default: the name

    @property
    def public(self) -> str:
        return self.option or self.name

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"in {'(' if self.low_open or self.low is None else '['}{low}, {high}{')' if self.high is None else ']'}"

    def check(self, value, spell: Callable[[str], str]):
        """The value converted to the knob's type, or a DlmError that names the knob as the user spells it."""
        where = spell(self.public)
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise DlmError(f"{where} must be {self.range_text()}, got {value!r}", param=self.public)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (self.kind is int and isinstance(value, float) and not value.is_integer()):
            raise DlmError(f"{where} must be a{'n integer' if self.kind is int else ' number'}, got {value!r}",
                           param=self.public)
        value = self.kind(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise DlmError(f"{where} must be a finite number, got {value}", param=self.public)
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if too_low or (self.high is not None and value > self.high):
            raise DlmError(f"{where} must be {self.range_text()}, got {value:g}", param=self.public)
        return value


# The knobs, each defined once and shared by the samplers that take it.
TOP_K = Knob("top_k", int, "keep the k most likely tokens", low=1)
TOP_P = Knob("top_p", float, "keep the smallest set of tokens whose probability reaches p (nucleus)", low=0,
             high=1, low_open=True)
BLOCK_LENGTH = Knob("block_length", int, "semi-autoregressive blocks of this many tokens (LLaDA)", low=1)
THRESHOLD = Knob("threshold", float, "also commit every position whose confidence exceeds this (Fast-dLLM)",
                 low=0, high=1)
FACTOR = Knob("factor", float, "commit the largest n with (n + 1)(1 - c_n) < FACTOR (Fast-dLLM)", low=0,
              low_open=True)
CONFIDENCE = Knob("confidence", str, "how positions are ranked (default prob; for the block sampler, leaving it, "
                  "threshold and factor out means exact reverse steps in random order)", choices=CONFIDENCE_RULES)
SUB_BLOCK = Knob("sub_block", int, "with threshold/factor/confidence: commit inside sub-blocks of N tokens, left "
                 "to right (Fast-dLLM v2)", low=1)
CACHE = Knob("cache", str, "with block_length: Fast-dLLM's approximate prefix or dual KV cache", choices=CACHE_MODES)
ETA = Knob("eta", float, "remdm: remasking strength; ddim: 0 = deterministic, 1 = DDPM", low=0, high=1)
REMASK = Knob("schedule", str, "ReMDM remasking schedule (default cap)", choices=REMASKING_SCHEDULES,
              option="remask")


def _process_floor(process, generated: int, knobs: dict) -> int:
    return process.min_steps(generated)


def _confidence_floor(process, generated: int, knobs: dict) -> int:
    """One step per LLaDA block at least."""
    block = knobs.get("block_length")
    return max(process.min_steps(generated), math.ceil(generated / block) if block else 1)


def _block_floor(process, generated: int, knobs: dict) -> int:
    """One step per block, and one per sub-block when sub-blocks commit in turn."""
    blocks = process.min_steps(generated)
    sub = knobs.get("sub_block")
    ranked = any(knobs.get(k) is not None for k in ("confidence", "threshold", "factor"))
    return blocks * (math.ceil(process.block_size / sub) if sub and ranked else 1)


@dataclass(frozen=True)
class SamplerRecord:
    """What a sampler is, for everything above the sampling layer."""
    name: str
    function: Callable
    knobs: tuple[Knob, ...]
    summary: str
    default_temperature: float = 1.0
    greedy_batch_invariant: bool = False  # at temperature 0 a row's output depends on that row alone (tested)
    remasks: bool = False  # a written token may turn back into [MASK]: a position that is not masked is not final
    left_to_right: bool = False  # writes each position once, left to right, over the [MASK] placeholder
    uses_steps: bool = True  # False: one forward pass per token (or per accepted draft); `steps` is ignored
    extends_context: bool = False  # slides a window over a KV cache, so it can write past the model's context
    stops_at_eos: bool = False  # takes `eos_id` and stops once every row has written end-of-text
    exclusive: tuple[tuple[str, ...], ...] = ()  # groups of knobs of which at most one may be given
    min_steps: Callable = field(default=_process_floor)  # (process, generated, knobs) -> fewest steps allowed

    def knob(self, public: str) -> Knob | None:
        return next((k for k in self.knobs if k.public == public), None)


RECORDS: dict[str, SamplerRecord] = {r.name: r for r in (
    SamplerRecord("ancestral", sample_ancestral, (TOP_K, TOP_P),
                  "exact reverse steps x_s ~ p(x_s | x_t) (MDLM, D3PM-uniform)"),
    SamplerRecord("confidence", sample_confidence,
                  (BLOCK_LENGTH, THRESHOLD, FACTOR, CONFIDENCE, CACHE, TOP_K, TOP_P),
                  "commit the surest masked positions each step (LLaDA; Fast-dLLM thresholds and caches)",
                  default_temperature=0.0, greedy_batch_invariant=True, stops_at_eos=True, exclusive=(("threshold", "factor"),),
                  min_steps=_confidence_floor),
    SamplerRecord("remdm", sample_remdm, (ETA, REMASK, TOP_K, TOP_P),
                  "masked diffusion that may remask written tokens (ReMDM)", remasks=True),
    SamplerRecord("ddpm", sample_ddpm, (TOP_K, TOP_P), "Gaussian ancestral sampling (DDPM)"),
    SamplerRecord("ddim", sample_ddim, (ETA, TOP_K, TOP_P), "Gaussian DDIM, deterministic at eta 0"),
    SamplerRecord("block", sample_blocks, (THRESHOLD, FACTOR, CONFIDENCE, SUB_BLOCK, TOP_K, TOP_P),
                  "block diffusion with its exact KV cache; parallel commits inside a block (Fast-dLLM v2)",
                  extends_context=True, exclusive=(("threshold", "factor"),), min_steps=_block_floor),
    SamplerRecord("speculative", sample_speculative, (TOP_K, TOP_P),
                  "draft a block per pass, verify with the model's own AR stream", left_to_right=True,
                  uses_steps=False, extends_context=True),
    SamplerRecord("autoregressive", sample_autoregressive, (TOP_K, TOP_P), "left to right with a KV cache",
                  greedy_batch_invariant=True, left_to_right=True, uses_steps=False, extends_context=True),
)}


def greedy_sampler(process) -> str | None:
    """The process's first sampler that decodes greedily and batch-invariantly at temperature 0
    (one token per step: LLaDA's confidence order, or left to right), or None."""
    return next((s for s in process.samplers if RECORDS[s].greedy_batch_invariant), None)


def all_knobs() -> dict[str, Knob]:
    """Every knob of every sampler by its public name (one definition each)."""
    out: dict[str, Knob] = {}
    for record in RECORDS.values():
        for knob in record.knobs:
            if out.setdefault(knob.public, knob) is not knob:
                raise AssertionError(f"two knobs are spelled {knob.public!r}; define each knob once")
    return out


@dataclass(frozen=True)
class SamplerRequest:
    """What a user asked for, unchecked. Knobs are keyed by their public names (see `Knob.public`)."""
    sampler: str | None = None  # None: the process's default
    steps: int | None = None  # None: one per generated token
    temperature: float | None = None  # None: the sampler's default
    seed: int | None = 0  # None: the caller draws one when it runs the plan (the server's unseeded requests)
    knobs: dict = field(default_factory=dict)  # None values are left out
    cfg: float = 0.0  # classifier-free guidance scale (0 = none)
    ban: str | None = None  # text whose tokens are never written
    stop_at_eos: bool = False  # let samplers that can stop once every row has written end-of-text


@dataclass(frozen=True)
class Plan:
    """A checked request: what `run_plan` executes. Frozen and hashable (the server batches
    requests whose plans are equal)."""
    record: SamplerRecord
    steps: int
    temperature: float
    knobs: tuple[tuple[str, object], ...]  # (function keyword, value), sorted
    seed: int | None = None
    cfg: float = 0.0
    ban: str | None = None
    stop_at_eos: bool = False

    @property
    def sampler(self) -> str:
        return self.record.name

    def keywords(self) -> dict:
        return dict(self.knobs)


def _spell_default(knob: str) -> str:
    return knob


def resolve(process, request: SamplerRequest, *, generated: int,
            spell: Callable[[str], str] = _spell_default) -> Plan:
    """Check `request` against the process and the sampler's record -> Plan, or a DlmError
    whose message names the field as the caller's user spells it (`spell("block_length")` is
    "--block-length" on the command line) and whose `param` is the public knob name."""
    name = request.sampler or process.default_sampler
    if name not in RECORDS or name not in process.samplers:
        raise DlmError(f"the {name} sampler cannot sample a {process.name} model; use {spell('sampler')} "
                       f"{' or '.join(process.samplers)}", param="sampler")
    record = RECORDS[name]
    given = {k: v for k, v in request.knobs.items() if v is not None}
    refused = [k for k in given if record.knob(k) is None]
    if refused:
        takers = [s for s in process.samplers if s in RECORDS and all(RECORDS[s].knob(k) for k in refused)]
        also = f", or use {spell('sampler')} {' or '.join(takers)}" if takers else ""
        raise DlmError(f"the {name} sampler does not take {', '.join(spell(k) for k in refused)}; leave it "
                       f"out{also}", param=refused[0])
    values = {k: record.knob(k).check(v, spell) for k, v in given.items()}
    for group in record.exclusive:
        both = [k for k in group if k in values]
        if len(both) > 1:
            raise DlmError(f"use either {' or '.join(spell(k) for k in both)}, not both", param=both[1])
    if request.temperature is not None and not (math.isfinite(request.temperature) and request.temperature >= 0):
        raise DlmError(f"{spell('temperature')} must be >= 0, got {request.temperature}", param="temperature")
    if not (math.isfinite(request.cfg) and request.cfg >= 0):
        raise DlmError(f"{spell('cfg')} must be >= 0, got {request.cfg}", param="cfg")
    if request.cfg and values.get("cache", "none") != "none":
        raise DlmError(f"{spell('cfg')} cannot be combined with {spell('cache')} {values['cache']} (an approximate "
                       f"cache built outside the model); leave out {spell('cache')}", param="cache")
    if request.steps is not None and request.steps < 1:
        raise DlmError(f"{spell('steps')} must be >= 1, got {request.steps}", param="steps")
    keywords = {record.knob(k).name: v for k, v in values.items()}
    steps = request.steps or max(generated, 1)
    if record.uses_steps:
        floor = record.min_steps(process, generated, keywords)
        if steps < floor:
            raise DlmError(f"{steps} steps cannot cover {floor} blocks (one step each, for {generated} tokens): ask "
                           f"for at least {floor} {spell('steps')} or larger blocks", param="steps")
    temperature = record.default_temperature if request.temperature is None else float(request.temperature)
    return Plan(record=record, steps=steps, temperature=temperature, knobs=tuple(sorted(keywords.items())),
                seed=request.seed, cfg=float(request.cfg), ban=request.ban or None, stop_at_eos=request.stop_at_eos)
