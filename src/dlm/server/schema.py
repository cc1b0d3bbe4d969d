"""Request bodies and the one place that turns a request into engine Jobs.

Validation happens here, once, at the edge: every refusal is an `ApiError` with a 4xx status
and a message that says what to change; nothing past this point checks user input again.
"""

from __future__ import annotations

import functools

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from dlm.errors import DlmError
from dlm.sampling import parse_template
from dlm.sampling.registry import SamplerRequest, all_knobs, resolve
from dlm.sampling.run import check_fits
from dlm.server.engine import Row, Settings, request_field
from dlm.server.engine import canvas_tokens, work
from dlm.server.limits import Limits

MAX_SEED = 2**63 - 1


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


UNSUPPORTED = {"echo", "logprobs", "best_of", "suffix", "logit_bias", "presence_penalty", "frequency_penalty"}


class RequestFields(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str | None = None
    n: int = 1
    temperature: float | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None  # accepted for OpenAI clients; usage always comes in the last chunk
    user: str | None = None  # accepted and ignored, as a tag for the caller's own logs
    # dlm's own fields
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float = 0.0
    dlm_steps: bool = False  # with stream: also send an `event: dlm.step` after every denoising step


# Every sampler knob is a field, spelled as its record's public name (top_p, top_k, block_length,
# threshold, factor, confidence, cache, eta, remask, sub_block): a new sampler's knobs need no edit here.
KNOBS = all_knobs()
SamplingFields = create_model("SamplingFields", __base__=RequestFields,
                              **{name: (knob.kind | None, None) for name, knob in KNOBS.items()})


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = ""
    max_tokens: int | None = None
    stop: str | list[str] | None = None


class InfillRequest(SamplingFields):
    text: str


def parse(model: type[BaseModel], data) -> BaseModel:
    """JSON value -> request object, or an ApiError naming the first field that is wrong."""
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        field = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            hint = ("this server does not support it" if field in UNSUPPORTED else "it is not a field of this request")
            known = ", ".join(sorted(model.model_fields))
            raise ApiError(400, f"unknown field '{field}': {hint}; remove it (fields: {known})", field) from None
        if err["type"] == "missing":
            raise ApiError(400, f"'{where}' is required", field) from None
        raise ApiError(400, f"'{where}': {err['msg']} (got {err.get('input')!r:.80})", field) from None


def _check_range(name: str, value, low, high, *, low_open: bool = False) -> None:
    if value is None:
        return
    if (value <= low if low_open else value < low) or value > high:
        bracket = "(" if low_open else "["
        raise ApiError(400, f"'{name}' must be in {bracket}{low}, {high}], got {value}", name)


def quoted(field: str) -> str:
    """A sampler knob as a request field, for messages: 'cfg_scale'."""
    return f"'{request_field(field)}'"


def settings_for(req: SamplingFields, ckpt, limits: Limits, *, command: str, generated: int) -> Settings:
    """The server's own limits, then the sampler's checks (dlm.sampling.registry.resolve, the same
    as the command line's) -> the Settings of the request's rows."""
    if req.dlm_steps and not req.stream:
        raise ApiError(400, "'dlm_steps' sends events in a stream: set 'stream': true as well", "dlm_steps")
    _check_range("n", req.n, 1, limits.max_n)
    _check_range("temperature", req.temperature, 0, limits.max_temperature)
    _check_range("cfg_scale", req.cfg_scale, 0, limits.max_cfg_scale)
    _check_range("seed", req.seed, 0, MAX_SEED)
    _check_range("steps", req.steps, 1, limits.max_steps)
    _check_range("block_length", req.block_length, 1, limits.max_tokens)
    _check_range("sub_block", req.sub_block, 1, limits.max_tokens)
    request = SamplerRequest(sampler=req.sampler, steps=req.steps, temperature=req.temperature, seed=req.seed,
                             knobs={name: getattr(req, name) for name in KNOBS}, cfg=req.cfg_scale,
                             stop_at_eos=command == "generate")
    try:
        plan = resolve(ckpt.process, request, generated=generated, spell=quoted)
    except DlmError as e:
        raise ApiError(400, str(e), e.param and request_field(e.param)) from None
    return Settings(command=command, generated=generated, plan=plan)


def encode(tokenizer, text: str, param: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except DlmError as e:  # a character a char-level model never saw
        raise ApiError(400, str(e), param) from None


@functools.cache
def longest_token(tokenizer) -> int:
    """The most characters of text one token can stand for: its string's length (a byte-level token's
    string has one character per byte, and a character is at least a byte). Special tokens are left
    out: text typed by a user never becomes one."""
    special = set(tokenizer.specials.values())
    vocab = tokenizer.backend.get_vocab(with_added_tokens=False)
    return max((len(token) for token, i in vocab.items() if i not in special), default=1)


def least_tokens(tokenizer, text: str) -> int:
    """A lower bound on len(tokenizer.encode(text)), in time linear in the text and without the
    tokenizer's model: characters (after the tokenizer's normalizer, which may merge some) divided
    by the longest token's."""
    normalizer = tokenizer.backend.normalizer
    chars = len(normalizer.normalize_str(text) if normalizer is not None else text)
    return -(-chars // longest_token(tokenizer))


def fits(ckpt, total: int, what: str, param: str, hint: str | None = None) -> None:
    """check_fits as a 400 (`hint` replaces its generic advice)."""
    try:
        check_fits(ckpt, total, what)
    except DlmError as e:
        message = str(e) if hint is None else str(e).replace("shorten the text or generate fewer tokens", hint)
        raise ApiError(400, message, param) from None


def check_budget(rows: list[Row], settings: Settings, guided: bool, limits: Limits) -> None:
    """Refuse, before any work, a request that costs more token-steps than `limits.work_budget`."""
    cost = work(rows, settings.steps) * (2 if guided else 1)
    if cost > limits.work_budget:
        guidance = " x 2 (cfg_scale: two passes a step)" if guided else ""
        raise ApiError(400, f"this request costs {len(rows)} samples x {settings.steps} steps x "
                            f"{canvas_tokens(rows)} canvas tokens{guidance} = {cost:,} token-steps, over this server's "
                            f"budget of {limits.work_budget:,} per request; ask for fewer steps, samples (n) or "
                            f"tokens", "steps")


def plan_completion(req: CompletionRequest, ckpt, limits: Limits) -> tuple[Settings, list[Row]]:
    _check_range("n", req.n, 1, limits.max_n)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise ApiError(400, "'prompt' is an empty list: give a string or a list of 1 to "
                            f"{limits.max_prompts} strings", "prompt")
    if len(prompts) > limits.max_prompts:
        raise ApiError(400, f"'prompt' has {len(prompts)} strings; give at most {limits.max_prompts}", "prompt")
    max_tokens = min(limits.default_max_tokens, limits.max_tokens) if req.max_tokens is None else req.max_tokens
    _check_range("max_tokens", max_tokens, 1, limits.max_tokens)
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > limits.max_stop:
        raise ApiError(400, f"'stop' has {len(stops)} strings; give at most {limits.max_stop}", "stop")
    if any(not s or len(s) > limits.max_stop_chars for s in stops):
        raise ApiError(400, f"each 'stop' string must have 1 to {limits.max_stop_chars} characters", "stop")
    if len(prompts) * req.n > limits.max_rows:
        raise ApiError(400, f"{len(prompts)} prompts x n={req.n} is {len(prompts) * req.n} samples; ask for at most "
                            f"{limits.max_rows} in one request", "n")
    settings = settings_for(req, ckpt, limits, command="generate", generated=max_tokens)
    hint = "shorten the prompt or lower max_tokens"
    for i, prompt in enumerate(prompts):  # before tokenizing anything: a long text costs no tokenizer time
        least = least_tokens(ckpt.tokenizer, prompt)
        fits(ckpt, least + max_tokens, f"prompt {i} (at least {least} tokens) and max_tokens {max_tokens}",
             "prompt", hint)
    rows = []
    for i, prompt in enumerate(prompts):
        ids = encode(ckpt.tokenizer, prompt, "prompt")
        fits(ckpt, len(ids) + max_tokens, f"prompt {i} ({len(ids)} tokens) and max_tokens {max_tokens}", "max_tokens",
             hint)
        rows += [Row(segments=(tuple(ids), max_tokens), pieces=(max_tokens,), ends_at_eos=True, stops=tuple(stops))
                 for _ in range(req.n)]
    check_budget(rows, settings, req.cfg_scale > 0, limits)
    return settings, rows


def plan_infill(req: InfillRequest, ckpt, limits: Limits) -> tuple[Settings, list[Row]]:
    _check_range("n", req.n, 1, limits.max_n)
    if not ckpt.process.infills:
        raise ApiError(400, f"this {ckpt.process.name} model writes left to right and cannot fill a span with text "
                            f"after it; use /v1/completions", "text")
    try:
        pieces = parse_template(req.text)
    except DlmError as e:
        raise ApiError(400, str(e), "text") from None
    if any(isinstance(p, range) for p in pieces):
        raise ApiError(400, "spans of unknown length (<fill:A-B>) are not served; give each span one length, "
                            "e.g. <fill:12> (or use `dlm infill`, which searches the lengths)", "text")
    generated = sum(p for p in pieces if isinstance(p, int))
    _check_range("text (tokens in <fill:N> spans)", generated, 1, limits.max_tokens)
    if req.n > limits.max_rows:
        raise ApiError(400, f"n={req.n}: ask for at most {limits.max_rows} samples in one request", "n")
    settings = settings_for(req, ckpt, limits, command="infill", generated=generated)
    least = sum(p if isinstance(p, int) else least_tokens(ckpt.tokenizer, p) for p in pieces)
    fits(ckpt, least, f"the text (at least {least - generated} tokens) and its spans", "text")  # before tokenizing
    segments = tuple(p if isinstance(p, int) else tuple(encode(ckpt.tokenizer, p, "text")) for p in pieces)
    fits(ckpt, sum(s if isinstance(s, int) else len(s) for s in segments), "the text and its spans", "text")
    rows = [Row(segments=segments, pieces=tuple(pieces), ends_at_eos=False) for _ in range(req.n)]
    check_budget(rows, settings, req.cfg_scale > 0, limits)
    return settings, rows
