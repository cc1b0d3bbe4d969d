"""`dlm generate` and `dlm infill`: build a Canvas at the edge, run a sampler, print text."""

from __future__ import annotations

import argparse
import sys

from dlm.errors import DlmError
from dlm.sampling import Canvas, infill_canvas, parse_template
from dlm.sampling.editing import Edit, cut_at_stop, edit_pieces
from dlm.sampling.registry import all_knobs
from dlm.sampling.run import SamplerRequest, check_fits, run_sampler
from dlm.sampling.length import candidate_lengths, infill_lengths, with_lengths
from dlm.training.checkpoint import Checkpoint

def cli_flag(field: str) -> str:
    """A request field or sampler knob as its command-line flag: block_length -> --block-length."""
    return "--" + field.replace("_", "-")


def sampler_call(args: argparse.Namespace, ckpt: Checkpoint, canvas: Canvas, generated: int, callback=None):
    """Run the chosen sampler with the knobs the user gave on the command line (see run_sampler)."""
    knobs = {name: getattr(args, name) for name in all_knobs()}  # flags made from the samplers' records
    request = SamplerRequest(sampler=args.sampler, steps=args.steps, temperature=args.temperature, seed=args.seed,
                             knobs=knobs, cfg=args.cfg, ban=args.ban, stop_at_eos=args.command == "generate")
    return run_sampler(ckpt, canvas, request, generated=generated, callback=callback, option=cli_flag)


def live_view(args: argparse.Namespace, ckpt: Checkpoint, canvas: Canvas, title: str):
    if args.json or args.no_live or not sys.stdout.isatty():
        return None
    from dlm.cli.terminal import LiveView

    return LiveView(ckpt.tokenizer, canvas, title=title)


def emit(args: argparse.Namespace, payload: dict, texts: list[str], summary: str, printed: bool = False) -> int:
    if args.json:
        from dlm.cli import emit_json

        emit_json(payload)
        return 0
    if not printed:
        for i, text in enumerate(texts):
            if len(texts) > 1:
                print(f"--- sample {i + 1}")
            print(text)
    print(summary, file=sys.stderr)
    return 0


def run_length_search(args: argparse.Namespace, ckpt: Checkpoint, pieces: list, device) -> int:
    """`dlm infill` with a span of unknown length: fill it at several lengths, keep the likeliest."""
    tok = ckpt.tokenizer
    longest = [c[-1] for c in zip(*candidate_lengths(pieces, per_span=args.lengths))] if pieces else []
    check_fits(ckpt, infill_canvas(with_lengths(pieces, longest), tok).canvas.shape[1],
               "the text and its longest spans")
    used = {}

    def fill(canvas: Canvas):
        out, used["sampler"], used["temperature"] = sampler_call(args, ckpt, canvas, int(canvas.editable[0].sum()))
        return out

    search = infill_lengths(fill, ckpt.model, ckpt.process, pieces, tok, num_samples=args.num_samples,
                            per_span=args.lengths, seed=args.seed, device=device)
    payload = {"texts": search.texts, "text": search.texts[0], "lengths": [list(n) for n in search.lengths],
               "candidates": [list(n) for n in search.candidates],
               "criterion": search.criterion, "scores": search.scores.T.tolist(),  # (samples, candidates)
               "nfe": search.nfe, "seconds": search.seconds, "seed": args.seed, **used}
    chosen = ", ".join("/".join(str(n) for n in lengths) for lengths in search.lengths)
    return emit(args, payload, search.texts,
                f"[{used['sampler']} sampler: tried {len(search.candidates)} span lengths, chose {chosen} tokens "
                f"(by the {search.criterion} criterion); {search.nfe} forward passes, {search.seconds:.2f} s]")


def run(args: argparse.Namespace) -> int:
    from dlm.cli import load_from_args

    ckpt = load_from_args(args)
    device = next(ckpt.model.parameters()).device
    tok = ckpt.tokenizer
    if args.command == "generate":
        if args.length <= 0:
            raise DlmError(f"--length must be 1 or more, got {args.length}")
        prompts = args.prompt if args.prompt is not None else [""]
        if args.prompt is not None and any(p == "" for p in args.prompt):
            raise DlmError("a --prompt is empty; leave out --prompt for unconditional generation")
        prompt_ids = [tok.encode(p) for p in prompts]
        longest = max(len(p) for p in prompt_ids)
        check_fits(ckpt, longest + args.length, f"the prompt ({longest} tokens) and --length {args.length}")
        rows = [ids for ids in prompt_ids for _ in range(args.num_samples)]
        canvas = Canvas.for_generation(rows, args.length, fill_id=tok.mask_id, pad_id=tok.pad_id, device=device)
        generated = args.length

        def finish(tokens, b):  # the prompt, then the generated text up to the first end-of-text
            text = tok.decode_until_eos(canvas.generated(tokens, b))
            return prompts[b // args.num_samples] + cut_at_stop(text, args.stop or [])

        texts_key = "samples"
    else:
        pieces = (edit_pieces(args.text, [Edit.parse(s) for s in args.span], tok) if args.span
                  else parse_template(args.text))
        if any(isinstance(p, range) for p in pieces):
            return run_length_search(args, ckpt, pieces, device)
        infill = infill_canvas(pieces, tok, num_samples=args.num_samples, device=device)
        canvas = infill.canvas
        check_fits(ckpt, canvas.shape[1], "the text and its spans")
        generated = sum(p for p in pieces if isinstance(p, int))
        finish = lambda tokens, b: infill.assemble(tokens, tok, row=b)  # noqa: E731
        texts_key = "texts"

    view = live_view(args, ckpt, canvas, title=f"dlm {args.command}")
    if view is not None:
        with view:
            out, name, temperature = sampler_call(args, ckpt, canvas, generated, callback=view)
    else:
        out, name, temperature = sampler_call(args, ckpt, canvas, generated)
    texts = [finish(out.tokens, b) for b in range(canvas.shape[0])]
    total_generated = generated * canvas.shape[0]
    payload = {texts_key: texts, "nfe": out.nfe, "steps": out.steps, "seconds": out.seconds,
               "tokens_per_second": total_generated / max(out.seconds, 1e-9),
               "tokens_per_forward": out.tokens_per_forward, "sampler": name, "temperature": temperature,
               "seed": args.seed}
    if args.command == "infill":
        payload["text"] = texts[0]
    return emit(args, payload, texts,
                f"[{name} sampler: {out.steps} steps, {out.nfe} forward passes, {out.seconds:.2f} s, "
                f"{payload['tokens_per_second']:.0f} tokens/s, {out.tokens_per_forward:.2f} tokens per forward]",
                printed=view is not None)
