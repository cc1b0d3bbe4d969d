"""dlm's confidence sampler against LLaDA's and Fast-dLLM's own `generate` code, on the same weights.

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch transformers==4.46.3 safetensors tokenizers \
        einops numpy rich
    OMP_WAIT_POLICY=PASSIVE /tmp/refenv/bin/python benchmarks/reference_race.py \
        --fast-dllm /path/to/Fast-dLLM --llada /path/to/LLaDA [--profile] [--json]

--fast-dllm is a checkout of NVlabs/Fast-dLLM (its llada/generate.py, and llada/model/, the
modelling code both references run on); --llada a checkout of ML-GSAI/LLaDA (its generate.py,
optional: without it the LLaDA row is left out). LLaDA's repository ships no modelling code (it
loads it from the model hub), so its `generate` runs on Fast-dLLM's copy of modeling_llada.py,
whose forward without the cache arguments is the published one; Fast-dLLM's copy wraps its
attention in torch.compile, which the untimed warm-up pays for. Like scripts/check_foreign_logits.py this needs
the `transformers` the reference code was written for (4.46), so it runs from an environment of
its own; dlm is imported from this checkout's src/. Nothing of the references is copied into dlm.

The checkpoint: a LLaDA-8B-Base-shaped folder (config.json keys, `model.transformer.*` tensors,
tokenizer.json; tests/foreign_fixtures.py `write_llada`) scaled to about 12M parameters (d_model
384, 6 layers of 6 heads, SwiGLU width 1152), random weights. Two changes to the draws make a
token-for-token comparison well posed: dlm never writes [MASK] and scores only the tokenizer's
rows, while the reference code takes the argmax and the softmax over every head row. Residual
channel 0 is held at a constant (every token embeds it, no layer writes it), and the head rows of
[MASK] and of the padding past the tokenizer read it with a large negative weight, so their
logits are below -100 at every position, as a trained model's are: the argmax never lands on
them and their share of the softmax is exactly zero in float32. The head is scaled so that a
fair share of positions is confident enough for the 0.9 threshold.

Settings, each at temperature 0, batch 1, the same prompt, gen_length, block_length and steps
(one step per token, as both papers' defaults):

| setting | reference | dlm |
|---|---|---|
| no cache | LLaDA `generate`; Fast-dLLM `generate` | `sample_confidence(cache="none")` |
| dual cache | Fast-dLLM `generate_with_dual_cache` | `cache="dual"` |
| threshold 0.9, no cache | Fast-dLLM `generate(threshold=0.9)` | `threshold=0.9` |
| threshold 0.9 + dual cache | Fast-dLLM `generate_with_dual_cache(threshold=0.9)` | `threshold=0.9, cache="dual"` |

Same tokens: both sides in float32; the share of generated positions that hold the same token
(over --prompts prompts). Speed: tokens/s = gen_length / wall time of one whole generation,
median over --repeats timed runs of each prompt after one untimed warm-up, each side in its best
precision (float32 or bfloat16, whichever runs one forward pass over the canvas faster on this
machine; --precision forces one). --profile adds, for the cached settings, torch.profiler's top
operators and cProfile's top Python functions of each side, per forward pass. The forwards
columns can differ: when a block's first (full) pass commits the whole block, Fast-dLLM's
dual-cache loop still runs one block pass before it looks, and dlm does not.

OMP_WAIT_POLICY=PASSIVE: on a 2-core machine shared with other jobs, OpenMP threads that spin
while they wait lose their core to the other jobs; a (96 x 384) @ (384 x 1152) product at 2
threads ran at 3.5 GFLOP/s spinning and 19 GFLOP/s passive here (1 thread: 24). Both sides run
in the same process under the same policy; the header prints it.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from dlm.sampling import Canvas, sample_confidence  # noqa: E402
from dlm.training import load_checkpoint  # noqa: E402
from foreign_fixtures import TEXT, write_llada  # noqa: E402

# About 12M parameters: 6 x (4 x 384^2 + 3 x 384 x 1152) + 2 x 384 x 384 = 11.8M.
SHAPE = dict(d_model=384, n_layers=6, n_heads=6, mlp_hidden_size=1152, tokens=384, embedding_size=384, max_len=1024)
HEAD_SCALE = 20.0  # peaked enough that the 0.9 threshold commits 3-7 tokens per forward, as on LLaDA-8B
CHANNEL, BAN = 1.0, 1000.0  # residual channel 0's constant; the weight banned rows read it with
THRESHOLD = 0.9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# -- the checkpoint -----------------------------------------------------------------------------
def write_checkpoint(folder: Path) -> dict:
    """write_llada at ~12M parameters, then the head and channel 0 as the module docstring says."""
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    write_llada(folder, shards=1, seed=0, **SHAPE)
    config = json.loads((folder / "config.json").read_text())
    V = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    mask_id = config["mask_token_id"]
    state = load_file(str(folder / "model.safetensors"))
    p = "model.transformer."
    state[p + "wte.weight"][:, 0] = CHANNEL
    for i in range(config["n_layers"]):
        state[f"{p}blocks.{i}.attn_out.weight"][0] = 0.0  # nothing writes channel 0
        state[f"{p}blocks.{i}.ff_out.weight"][0] = 0.0
    state[p + "ln_f.weight"][0] = 1.0
    head = state[p + "ff_out.weight"] * HEAD_SCALE  # (embedding_size, D)
    head[:, 0] = 0.0  # the kept rows ignore channel 0
    banned = [mask_id] + list(range(V, head.shape[0]))
    head[banned] = 0.0
    head[banned, 0] = -BAN
    state[p + "ff_out.weight"] = head
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return {"vocab": V, "embedding_size": head.shape[0], "mask_id": mask_id,
            "parameters": sum(t.numel() for t in state.values())}


# -- the references -----------------------------------------------------------------------------
def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def references(fast_root: Path, llada_root: Path | None):
    """-> (Fast-dLLM's llada/generate.py, LLaDA's generate.py or None, the LLaDAModelLM class)."""
    fast_dir = fast_root / "llada" if (fast_root / "llada" / "generate.py").exists() else fast_root
    if not (fast_dir / "generate.py").exists() or not (fast_dir / "model" / "modeling_llada.py").exists():
        raise SystemExit(f"no llada/generate.py and llada/model/modeling_llada.py in {fast_root} (a Fast-dLLM checkout)")
    sys.path.insert(0, str(fast_dir))  # its generate.py imports model.modeling_llada
    fast = import_file("fastdllm_generate", fast_dir / "generate.py")
    llada = None
    if llada_root is not None:
        if not (llada_root / "generate.py").exists():
            raise SystemExit(f"no generate.py in {llada_root} (an ML-GSAI/LLaDA checkout)")
        llada = import_file("llada_generate", llada_root / "generate.py")
    return fast, llada, sys.modules["model.modeling_llada"].LLaDAModelLM


# -- the contestants ----------------------------------------------------------------------------
class Race:
    def __init__(self, folder: Path, info: dict, fast, llada, model_cls, args):
        self.folder, self.info, self.fast, self.llada, self.cls, self.args = folder, info, fast, llada, model_cls, args
        self.mask_id = info["mask_id"]
        self._models: dict = {}

    def model(self, side: str, precision: str):
        key = (side, precision)
        if key not in self._models:
            if side == "dlm":
                self._models[key] = load_checkpoint(self.folder, dtype=DTYPES[precision])
            else:
                self._models[key] = self.cls.from_pretrained(str(self.folder), torch_dtype=DTYPES[precision]).eval()
        return self._models[key]

    def run(self, side: str, setting: dict, precision: str, prompt: list[int]) -> tuple[list[int], int]:
        """One whole generation -> (generated ids, forward passes)."""
        G, B, th = self.args.gen_length, self.args.block_length, setting["threshold"]
        if side == "dlm":
            ckpt = self.model("dlm", precision)
            tok = ckpt.tokenizer
            canvas = Canvas.for_generation([prompt], G, fill_id=tok.mask_id, pad_id=tok.pad_id)
            out = sample_confidence(ckpt.model, ckpt.process, canvas, steps=G, block_length=B, temperature=0.0,
                                    threshold=th, cache=setting["cache"])
            return canvas.generated(out.tokens, 0), out.nfe
        model = self.model("ref", precision)
        x = torch.tensor([prompt])
        kw = dict(steps=G, gen_length=G, block_length=B, temperature=0.0, remasking="low_confidence",
                  mask_id=self.mask_id)
        if side == "llada":
            out, nfe = self.llada.generate(model, x, **kw), G
        elif setting["cache"] == "dual":
            out, nfe = self.fast.generate_with_dual_cache(model, x, threshold=th, **kw)
        else:
            out, nfe = self.fast.generate(model, x, threshold=th, **kw)
        return out[0, len(prompt):].tolist(), int(nfe)

    def forward_seconds(self, side: str, precision: str, length: int) -> float:
        """Median time of one forward pass over a (1, length) canvas."""
        x = torch.randint(0, self.info["vocab"], (1, length), generator=torch.Generator().manual_seed(0))
        model = self.model("dlm" if side == "dlm" else "ref", precision)
        times = []
        with torch.no_grad():
            for _ in range(4):
                start = time.perf_counter()
                if side == "dlm":
                    model.model(x, None)
                else:
                    model(x)
                times.append(time.perf_counter() - start)
        return statistics.median(times[1:])


SETTINGS = [
    {"name": "no cache", "ref": "llada", "ref_name": "LLaDA generate", "cache": "none", "threshold": None},
    {"name": "no cache", "ref": "fast", "ref_name": "Fast-dLLM generate", "cache": "none", "threshold": None},
    {"name": "dual cache", "ref": "fast", "ref_name": "Fast-dLLM generate_with_dual_cache", "cache": "dual",
     "threshold": None},
    {"name": f"threshold {THRESHOLD}", "ref": "fast", "ref_name": f"Fast-dLLM generate(threshold={THRESHOLD})",
     "cache": "none", "threshold": THRESHOLD},
    {"name": f"threshold {THRESHOLD} + dual cache", "ref": "fast",
     "ref_name": f"Fast-dLLM generate_with_dual_cache(threshold={THRESHOLD})", "cache": "dual",
     "threshold": THRESHOLD},
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def race_setting(race: Race, ref_side: str, setting: dict, precision: dict, prompts: list[list[int]],
                 repeats: int) -> dict:
    """Time both sides, interleaved (the order alternates) so that a change in the machine's load
    falls on both; -> median seconds, forwards and fp32 outputs per side."""
    sides = {"ref": ref_side, "dlm": "dlm"}
    for side, name in sides.items():
        race.run(name, setting, precision[side], prompts[0])  # untimed warm-up
    seconds = {"ref": [], "dlm": []}
    outputs = {"ref": [], "dlm": []}
    forwards = {"ref": [], "dlm": []}
    n = 0
    for prompt in prompts:
        for r in range(repeats):
            for side in (("ref", "dlm") if n % 2 == 0 else ("dlm", "ref")):
                start = time.perf_counter()
                ids, nfe = race.run(sides[side], setting, precision[side], prompt)
                seconds[side].append(time.perf_counter() - start)
                if r == 0:
                    forwards[side].append(nfe)
                    if precision[side] == "fp32":
                        outputs[side].append(ids)
            n += 1
    for side in sides:  # the token comparison is in float32 whatever the timed precision
        if precision[side] != "fp32":
            outputs[side] = [race.run(sides[side], setting, "fp32", prompt)[0] for prompt in prompts]
    return {side: {"seconds": statistics.median(seconds[side]), "forwards": statistics.mean(forwards[side]),
                   "outputs": outputs[side]} for side in sides}


def same_fraction(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


# -- profiles -----------------------------------------------------------------------------------
def profile(race: Race, side: str, setting: dict, precision: str, prompt: list[int], top: int) -> dict:
    """torch.profiler's operators and cProfile's Python functions of one generation, ms per forward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    race.run(side, setting, precision, prompt)
    start = time.perf_counter()
    _, nfe = race.run(side, setting, precision, prompt)
    wall = time.perf_counter() - start
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        race.run(side, setting, precision, prompt)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    op_rows = [{"op": e.key, "calls_per_forward": e.count / nfe, "self_ms_per_forward": e.self_cpu_time_total / 1e3 / nfe}
               for e in ops[:top]]
    prof_py = cProfile.Profile()
    prof_py.enable()
    race.run(side, setting, precision, prompt)
    prof_py.disable()
    stats = pstats.Stats(prof_py)
    funcs = []
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        funcs.append({"function": f"{Path(file).name}:{line}({name})", "calls_per_forward": calls / nfe,
                      "self_ms_per_forward": tottime * 1e3 / nfe, "cumulative_ms_per_forward": cumtime * 1e3 / nfe})
    funcs.sort(key=lambda f: f["self_ms_per_forward"], reverse=True)
    return {"side": side, "setting": setting["name"], "precision": precision, "forwards": nfe,
            "ms_per_forward": wall * 1e3 / nfe, "ops": op_rows, "functions": funcs[:top]}


def print_profile(p: dict) -> None:
    print(f"\n#### {p['setting']}: {p['side']} ({p['precision']}), {p['forwards']} forwards, "
          f"{p['ms_per_forward']:.2f} ms per forward (wall, unprofiled)\n")
    print("| operator | calls/forward | self ms/forward |\n|---|---|---|")
    for r in p["ops"]:
        print(f"| `{r['op']}` | {r['calls_per_forward']:.1f} | {r['self_ms_per_forward']:.3f} |")
    print("\n| Python function | calls/forward | self ms/forward | cumulative ms/forward |\n|---|---|---|---|")
    for r in p["functions"]:
        print(f"| `{r['function']}` | {r['calls_per_forward']:.1f} | {r['self_ms_per_forward']:.3f} | "
              f"{r['cumulative_ms_per_forward']:.3f} |")


# -- main ---------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-dllm", type=Path, required=True, help="a checkout of NVlabs/Fast-dLLM")
    parser.add_argument("--llada", type=Path, default=None, help="a checkout of ML-GSAI/LLaDA (for its generate.py)")
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed generations per prompt (median taken)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["best", "fp32", "bf16"], default="best")
    parser.add_argument("--profile", action="store_true", help="profile both sides of the cached settings")
    parser.add_argument("--top", type=int, default=12, help="rows of each profile")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.gen_length % args.block_length:
        raise SystemExit("--gen-length must be a multiple of --block-length (the references assert it)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    fast, llada, model_cls = references(args.fast_dllm, args.llada)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "LLaDA-12M"
        info = write_checkpoint(folder)
        race = Race(folder, info, fast, llada, model_cls, args)
        ids = race.model("dlm", "fp32").tokenizer.encode(TEXT)
        P = args.prompt_length
        prompts = [ids[17 * k: 17 * k + P] for k in range(args.prompts)]
        L = P + args.gen_length
        log(f"LLaDA-shaped checkpoint: {info['parameters'] / 1e6:.1f}M parameters, {info['vocab']} tokens, "
            f"{info['embedding_size']} head rows; canvas {P} + {args.gen_length}, blocks of {args.block_length}, "
            f"{args.threads} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
            f"torch {torch.__version__}, transformers {transformers.__version__}")

        # the logits agree (as scripts/check_foreign_logits.py checks), else no token can be expected to
        x = torch.tensor([prompts[0] + [info["mask_id"]] * args.gen_length])
        with torch.no_grad():
            ours = race.model("dlm", "fp32").model(x, None)
            theirs = race.model("ref", "fp32")(x).logits[..., :info["vocab"]]
        logit_diff = (ours - theirs).abs().max().item()
        log(f"float32 logits, dlm against the reference model: max |diff| {logit_diff:.2e}")

        precision = {}
        forward_ms = {}
        for side in ("dlm", "ref"):
            forward_ms[side] = {p: race.forward_seconds(side, p, L) * 1e3 for p in DTYPES}
            precision[side] = (min(DTYPES, key=lambda p: forward_ms[side][p]) if args.precision == "best"
                               else args.precision)
            log(f"{side}: one forward over {L} tokens: " + ", ".join(f"{p} {ms:.1f} ms" for p, ms in
                                                                     forward_ms[side].items())
                + f" -> timed in {precision[side]}")

        rows = []
        G = args.gen_length
        for setting in SETTINGS:
            if setting["ref"] == "llada" and llada is None:
                continue
            got = race_setting(race, setting["ref"], setting, precision, prompts, args.repeats)
            ref, ours = got["ref"], got["dlm"]
            row = {"setting": setting["name"], "reference": setting["ref_name"],
                   "reference_tokens_per_second": G / ref["seconds"], "dlm_tokens_per_second": G / ours["seconds"],
                   "ratio": ref["seconds"] / ours["seconds"],
                   "identical_fraction": same_fraction(ours["outputs"], ref["outputs"]),
                   "reference_precision": precision["ref"], "dlm_precision": precision["dlm"],
                   "reference_forwards": ref["forwards"], "dlm_forwards": ours["forwards"],
                   "reference_ms_per_forward": ref["seconds"] * 1e3 / ref["forwards"],
                   "dlm_ms_per_forward": ours["seconds"] * 1e3 / ours["forwards"]}
            rows.append(row)
            log(f"{row['setting']:>28} vs {row['reference']}: ref {row['reference_tokens_per_second']:.1f} tok/s, "
                f"dlm {row['dlm_tokens_per_second']:.1f} tok/s, x{row['ratio']:.2f}, "
                f"same tokens {row['identical_fraction']:.3f}")

        profiles = []
        if args.profile:
            for setting in SETTINGS:
                if setting["cache"] != "dual":
                    continue
                for side in ("ref", "dlm"):
                    profiles.append(profile(race, "dlm" if side == "dlm" else "fast", setting, precision[side],
                                            prompts[0], args.top))

    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "transformers": transformers.__version__, "threads": args.threads, "parameters": info["parameters"],
              "gen_length": args.gen_length, "block_length": args.block_length, "steps": args.gen_length,
              "prompt_length": P, "prompts": args.prompts, "repeats": args.repeats, "logit_max_diff": logit_diff,
              "forward_ms": forward_ms, "precision": precision, "rows": rows, "profiles": profiles}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"\n{info['parameters'] / 1e6:.1f}M-parameter LLaDA checkpoint, batch 1, {args.threads} threads, prompt {P}, "
          f"gen_length {args.gen_length}, block_length {args.block_length}, steps {args.gen_length}, temperature 0; "
          f"tokens/s in each side's best precision (reference {precision['ref']}, dlm {precision['dlm']}), "
          f"median of {args.prompts} prompts x {args.repeats}; same tokens in fp32\n")
    print("| setting | reference | reference tok/s | dlm tok/s | ratio | identical tokens | forwards (ref / dlm) "
          "| ms per forward (ref / dlm) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['reference']} | {r['reference_tokens_per_second']:.0f} | "
              f"{r['dlm_tokens_per_second']:.0f} | {r['ratio']:.2f}x | {r['identical_fraction']:.3f} | "
              f"{r['reference_forwards']:.0f} / {r['dlm_forwards']:.0f} | "
              f"{r['reference_ms_per_forward']:.1f} / {r['dlm_ms_per_forward']:.1f} |")
    for p in profiles:
        print_profile(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
