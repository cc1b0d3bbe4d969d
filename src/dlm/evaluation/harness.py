"""lm-evaluation-harness adapter: a dlm checkpoint as the lm_eval model "dlm" (the [eval] extra).

    dlm lm-eval runs/shakespeare --tasks dlm_shakespeare --limit 8
    python -m dlm.evaluation.harness --model dlm --model_args pretrained=runs/shakespeare,mc_num=32 \\
        --tasks dlm_shakespeare_mc --include_path src/dlm/evaluation/tasks

(lm_eval only knows the models it has imported, and it has no plugin entry points: the second
line imports this module, which registers "dlm", and then runs lm_eval's own command line.)

What the harness's four requests mean for a diffusion model:

- loglikelihood(context, continuation) -> (log p, is_greedy). log p is the evidence lower bound
  of the continuation c (N tokens) given the context x, estimated by Monte Carlo as LLaDA
  evaluates (Nie et al., 2025, eq. 6):

      log p(c | x) >= -E_{m ~ U{1..N}} E_{|S| = m} [ N/m sum_{l in S} -log p_theta(c_l | x, c with S masked) ]

  This is the process's own `nelbo` with the continuation as its loss mask (for masked
  diffusion, `MaskedDiffusion.nelbo`, the exact-count estimator; block diffusion applies it per
  block given the clean blocks before it), averaged over `mc_num` draws whose m are stratified
  over 1..N. Each draw is unbiased, so the mean is an unbiased estimate of the bound, and it is
  at most 0. Every request draws from its own torch.Generator seeded by (seed, context), so a
  result does not depend on which other requests ran, and the choices of one multiple-choice
  question share their random numbers (a lower-variance comparison). With one continuation
  token, or for the autoregressive process (exact chain-rule log-likelihood), one draw is
  exact. Uniform and Gaussian diffusion report their NELBO with the context held clean: a bound
  on the conditional likelihood of the model whose sampler keeps the prompt fixed.
  is_greedy: whether greedy decoding writes the continuation, decoded the way each process
  decodes greedily: the autoregressive sampler at temperature 0, or for masked diffusion
  LLaDA's check (the confidence sampler at temperature 0, one token per step, most confident
  first). Processes with no greedy decoder (block, uniform, Gaussian: their samplers draw the
  order or the noise at random) report False, and so does `check_greedy=False` (faster; only
  tasks such as LAMBADA's accuracy read it).
- loglikelihood_rolling(text) -> the same bound on log p(text), scored in windows when the text
  is longer than the model's context (see `windows`).
- generate_until(context, gen_kwargs) -> text from our samplers (`run_sampler`, the function the
  CLI and the server use), cut before the end-of-text token and the first `until` string.

A context longer than the model's context is cut from the left, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict
from pathlib import Path

import torch

from dlm.data.tokenizer import UnknownCharacterError
from dlm.errors import DlmError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the [eval] extra is missing
    raise DlmError("evaluating with lm-evaluation-harness needs it installed: pip install 'dlm[eval]' "
                   "(or pip install lm_eval)") from None

from dlm.processes.likelihood import stratified_uniforms
from dlm.sampling import Canvas
from dlm.sampling.editing import cut_at_stop
from dlm.sampling.registry import greedy_sampler
from dlm.sampling.run import SamplerRequest, run_sampler
from dlm.training.checkpoint import Checkpoint, load_checkpoint
from dlm.training.performance import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

TASKS = Path(__file__).resolve().parent / "tasks"  # the bundled local tasks (dlm_shakespeare_*)
DEFAULT_GEN_TOKS = 256  # lm_eval's default max_gen_toks


def windows(num_context: int, num_total: int, window: int) -> list[tuple[int, int, int]]:
    """How to score tokens num_context .. num_total - 1 of a sequence, each given the tokens before
    it, with a model that reads at most `window` tokens: (start, first, stop) triples, each the
    piece ids[start:stop] whose tokens ids[first:stop] are scored given ids[start:first].

    Every token is scored exactly once. A piece scores n = min(remaining, window - min(first,
    window // 2)) tokens and is given the min(first, window - n) tokens before them: a short
    continuation gets all the context that fits (cut from the left), a long text goes in pieces
    of about window / 2 tokens, each given the window / 2 tokens before it (the first piece of a
    text with no context is a whole window)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    pieces, first = [], num_context
    while first < num_total:
        n = min(num_total - first, window - min(first, window // 2))
        pieces.append((first - min(first, window - n), first, first + n))
        first += n
    return pieces


def request_seed(seed: int, text: str) -> int:
    """A 63-bit seed from (seed, text), the same in every Python process (unlike hash())."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _optional(cast, value):
    return None if value in (None, "", "None", "none") else cast(value)


class DlmLM(LM):
    """A dlm checkpoint behind lm_eval's LM interface (see the module docstring)."""

    def __init__(self, pretrained: str | Checkpoint, *, mc_num: int = 128, batch_size: int | str = 32,
                 sampler: str | None = None, steps: int | None = None, gen_length: int | None = None,
                 block_length: int | None = None, temperature: float | None = None, seed: int = 0,
                 device: str | None = "cpu", dtype: str = "float32", check_greedy: bool = True,
                 max_length: int | None = None, progress: bool = True, **unused):
        """pretrained: a run or checkpoint folder written by `dlm train` (or a loaded Checkpoint).
        mc_num: Monte-Carlo draws per loglikelihood request (LLaDA uses 128); batch_size: rows per
        forward pass (draws of one request; prompts in generation). sampler, steps, gen_length,
        block_length, temperature: generation (default: the process's sampler, one step per token,
        the task's max_gen_toks, the task's temperature). max_length: read at most this many tokens
        (default and upper limit: the model's context). Options lm_eval passes that a local model
        does not use (max_batch_size, ...) are ignored."""
        super().__init__()
        unused.pop("max_batch_size", None)
        if unused:
            log.warning("dlm: ignoring model arguments it does not know: %s", ", ".join(sorted(unused)))
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("dlm: no CUDA GPU is available; evaluating on the CPU")  # lm_eval's default device is cuda
            device = "cpu"
        self._device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self._device)  # of the weights, as `dlm generate --dtype` (8B in bf16: 16 GB)
        if isinstance(pretrained, Checkpoint):
            self.ckpt = pretrained
            self.ckpt.model.to(self._device, **({} if self.dtype == torch.float32 else {"dtype": self.dtype}))
        else:
            self.ckpt = load_checkpoint(pretrained, device=self._device, dtype=self.dtype)
        self.ckpt.model.eval()
        if str(batch_size).startswith("auto"):
            batch_size = 32  # lm_eval's "auto" probes GPU memory; a fixed size is predictable
        self.mc_num, self.batch_size = int(mc_num), int(batch_size)
        if self.mc_num < 1 or self.batch_size < 1:
            raise DlmError(f"mc_num and batch_size must be 1 or more, got {self.mc_num} and {self.batch_size}")
        self.sampler = _optional(str, sampler)
        self.steps, self.gen_length = _optional(int, steps), _optional(int, gen_length)
        self.block_length, self.temperature = _optional(int, block_length), _optional(float, temperature)
        self.seed, self.check_greedy, self.progress = int(seed), _flag(check_greedy), _flag(progress)
        limit = self.ckpt.context_length
        self._max_length = min(int(max_length), limit) if _optional(int, max_length) else limit
        process = self.ckpt.process
        self.exact = process.exact
        if self.sampler is not None and self.sampler not in process.samplers:
            raise DlmError(f"the {self.sampler} sampler cannot sample a {process.name} model; use sampler="
                           f"{' or sampler='.join(process.samplers)}")
        # greedy decoding, one token per step, whose output per row does not depend on the batch
        self.greedy_sampler = greedy_sampler(process)
        self._known: dict[str, bool] = {}  # character -> whether the tokenizer can encode it

    # -- what lm_eval reads -----------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return f"dlm-{self.ckpt.tokenizer.kind}"

    def _bar(self, total: int, desc: str, disable: bool):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=disable or not self.progress)

    # -- text -> token ids --------------------------------------------------------------------
    def _encodable(self, ch: str) -> bool:
        if ch not in self._known:
            try:
                self.ckpt.tokenizer.check_text(ch)
                self._known[ch] = True
            except UnknownCharacterError:
                self._known[ch] = False
        return self._known[ch]

    def _readable(self, text: str) -> str:
        """`text` without the characters the model's vocabulary lacks (with a warning)."""
        try:
            self.ckpt.tokenizer.check_text(text)
            return text
        except UnknownCharacterError:
            dropped = {c for c in text if not self._encodable(c)}
            log.warning("dlm: dropped the characters %r, which the model's vocabulary lacks, from a context",
                        "".join(sorted(dropped))[:20])
            return "".join(c for c in text if c not in dropped)

    def _encode_target(self, text: str) -> list[int] | None:
        """A text to score, or None when the model cannot write it (log p = -inf)."""
        try:
            return self.ckpt.tokenizer.encode(text)
        except UnknownCharacterError as e:
            log.warning("dlm: a continuation gets log-likelihood -inf: %s", e)
            return None

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int] | None]:
        """Token ids of (context, continuation). Trailing spaces of the context move into the
        continuation, and the continuation is the tokens of context + continuation after those of
        the context (as lm_eval's HF model and LLaDA do: BPE merges see the whole string)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context = self._readable(context)
        ctx = self.ckpt.tokenizer.encode(context)
        if self._encode_target(continuation) is None:
            return ctx, None
        return ctx, self.ckpt.tokenizer.encode(context + continuation)[len(ctx):]

    # -- the bound ----------------------------------------------------------------------------
    @torch.no_grad()
    def _nelbo_draws(self, ids: list[int], scored: int, generator: torch.Generator) -> torch.Tensor:
        """(K,) float64 draws of the NELBO, in nats, of the last `scored` tokens of `ids` given the
        tokens before them: process.nelbo with those tokens as its loss mask, m stratified."""
        process, dev = self.ckpt.process, self._device
        deterministic = self.exact or (process.absorbing and scored == 1)  # one masked token: nothing to draw
        K = 1 if deterministic else self.mc_num
        L = len(ids)
        x0 = torch.tensor(ids, dtype=torch.long, device=dev)[None]  # (1, L)
        loss_mask = (torch.arange(L, device=dev) >= L - scored)[None]  # (1, L): the continuation
        u = stratified_uniforms(1, K, generator=generator).reshape(K)  # (K,): the K draws cover m = 1..N evenly
        draws = []
        for start in range(0, K, self.batch_size):
            b = min(self.batch_size, K - start)
            nelbo = process.nelbo(self.ckpt.model, x0.expand(b, L), u=u[start:start + b],
                                  loss_mask=loss_mask.expand(b, L), generator=generator)  # (b,)
            draws.append(nelbo.double().cpu())
        return torch.cat(draws)  # (K,)

    def _log_likelihood(self, ctx: list[int], target: list[int], seed_text: str) -> tuple[float, bool]:
        """(ELBO estimate of log p(target | ctx) in nats, whether the context had to be cut)."""
        ids = ctx + target
        generator = torch.Generator(device=self._device).manual_seed(request_seed(self.seed, seed_text))
        total, cut = 0.0, False
        for start, first, stop in windows(len(ctx), len(ids), self.max_length):
            cut |= first == len(ctx) and start > 0
            total -= self._nelbo_draws(ids[start:stop], stop - first, generator).mean().item()
        return total, cut

    # -- lm_eval's requests -------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool]] = []
        greedy_todo: list[tuple[int, list[int], list[int]]] = []
        cut = 0
        bar = self._bar(len(requests), f"dlm loglikelihood (ELBO, {self.mc_num} draws)", disable_tqdm)
        for i, request in enumerate(requests):
            context, continuation = request.args
            ctx, target = self._encode_pair(context, continuation)
            if target is None:
                results.append((-math.inf, False))
            elif not target:
                results.append((0.0, True))  # the empty string: probability 1, and greedy decoding "writes" it
            else:
                ll, was_cut = self._log_likelihood(ctx, target, context)
                cut += was_cut
                results.append((ll, False))
                greedy_todo.append((i, ctx, target))
            bar.update(1)
        bar.close()
        if cut:
            log.warning("dlm: %d of %d contexts were longer than the model's context of %d tokens and were cut "
                        "from the left", cut, len(requests), self.max_length)
        for i, greedy in self._greedy(greedy_todo, disable_tqdm).items():
            results[i] = (results[i][0], greedy)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def _greedy(self, todo: list[tuple[int, list[int], list[int]]], disable_tqdm: bool) -> dict[int, bool]:
        """{request index: whether greedy decoding writes its continuation}, for the requests that
        fit the context; batched over requests with continuations of one length."""
        if not (self.check_greedy and self.greedy_sampler):
            return {}
        by_length = defaultdict(list)
        for i, ctx, target in todo:
            if len(target) < self.max_length:
                by_length[len(target)].append((i, ctx[len(ctx) - min(len(ctx), self.max_length - len(target)):],
                                               target))
        tok, out = self.ckpt.tokenizer, {}
        bar = self._bar(sum(map(len, by_length.values())), "dlm is_greedy (greedy decoding)", disable_tqdm)
        for n, rows in by_length.items():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                canvas = Canvas.for_generation([ctx for _, ctx, _ in chunk], n, fill_id=tok.mask_id,
                                               pad_id=tok.pad_id, device=self._device)
                request = SamplerRequest(sampler=self.greedy_sampler, steps=n, temperature=0.0, seed=self.seed)
                with torch.no_grad():
                    sample, _, _ = run_sampler(self.ckpt, canvas, request, generated=n)
                for b, (i, _, target) in enumerate(chunk):
                    out[i] = canvas.generated(sample.tokens, b) == target
                bar.update(len(chunk))
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        bar = self._bar(len(requests), f"dlm loglikelihood_rolling (ELBO, {self.mc_num} draws)", disable_tqdm)
        for request in requests:
            (text,) = request.args
            ids = self._encode_target(text)
            ll = -math.inf if ids is None else self._log_likelihood([], ids, text)[0]
            results.append(ll)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, ll)
            bar.update(1)
        bar.close()
        return results

    def _generation_settings(self, gen_kwargs: dict) -> tuple[int, float | None, tuple[str, ...]]:
        """(tokens to generate, temperature, stop strings) of one request. Our model arguments
        win over the task's gen_kwargs; the temperature is the task's (0 for do_sample=False)
        unless the model arguments set one, else the sampler's default."""
        until = gen_kwargs.get("until") or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        length = self.gen_length or int(gen_kwargs.get("max_gen_toks") or DEFAULT_GEN_TOKS)
        temperature = self.temperature
        if temperature is None:
            if gen_kwargs.get("do_sample") is False:
                temperature = 0.0
            elif gen_kwargs.get("temperature") is not None:
                temperature = float(gen_kwargs["temperature"])
        return length, temperature, until

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        ckpt, tok = self.ckpt, self.ckpt.tokenizer
        extends = ckpt.process.extends_context
        W = self.max_length
        groups = defaultdict(list)  # (length, temperature) -> [(index, prompt ids, until)]
        capped = cut = 0
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            length, temperature, until = self._generation_settings(dict(gen_kwargs or {}))
            if not extends and length > W - 1:  # the canvas must hold prompt + generated tokens
                length, capped = W // 2, capped + 1
            keep = W - min(length, W // 2) if extends else W - length  # prompt tokens that fit
            ids = self.ckpt.tokenizer.encode(self._readable(context))
            cut += len(ids) > keep
            groups[(length, temperature)].append((i, ids[len(ids) - min(len(ids), keep):], until))
        if capped:
            log.warning("dlm: %d requests asked for more tokens than fit the model's context of %d; they "
                        "generate %d", capped, W, W // 2)
        if cut:
            log.warning("dlm: %d of %d prompts were cut from the left to fit the model's context of %d tokens",
                        cut, len(requests), W)
        results: list[str | None] = [None] * len(requests)
        bar = self._bar(len(requests), "dlm generate_until", disable_tqdm)
        batches = 0
        for (length, temperature), rows in groups.items():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                canvas = Canvas.for_generation([ids for _, ids, _ in chunk], length, fill_id=tok.mask_id,
                                               pad_id=tok.pad_id, device=self._device)
                request = SamplerRequest(sampler=self.sampler, steps=self.steps, temperature=temperature,
                                         seed=self.seed + batches,
                                         knobs={"block_length": self.block_length}, stop_at_eos=True)
                with torch.no_grad():
                    sample, _, _ = run_sampler(ckpt, canvas, request, generated=length)
                batches += 1
                for b, (i, _, until) in enumerate(chunk):
                    results[i] = cut_at_stop(tok.decode_until_eos(canvas.generated(sample.tokens, b)), until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                bar.update(len(chunk))
        bar.close()
        return results


if __name__ != "__main__":  # run as a script, the import below registers the module's own class
    register_model("dlm")(DlmLM)

if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    import dlm.evaluation.harness  # noqa: F401  registers "dlm"

    cli_evaluate()
