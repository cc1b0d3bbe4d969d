"""Samplers as records: every registered sampler and knob is reachable from the command line and
the server, each knob is a keyword of its sampler's function, and one resolver gives the same
plan and the same refusals to both (issue 16)."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("fastapi")

from dlm.cli import build_parser  # noqa: E402
from dlm.errors import DlmError  # noqa: E402
from dlm.processes import PROCESSES  # noqa: E402
from dlm.sampling.registry import RECORDS, SamplerRequest, all_knobs, resolve  # noqa: E402
from dlm.server.limits import Limits  # noqa: E402
from dlm.server.schema import ApiError, CompletionRequest, SamplingFields, settings_for  # noqa: E402

PROCESS_NAMES = ("masked", "uniform", "gaussian", "block", "ar")
SPECIALS = {"mask": 0, "pad": 1, "bos": 2, "eos": 3}


def process_for(name: str, **config):
    cls = PROCESSES[name]
    return cls.from_config({**getattr(cls, "TRAINING_DEFAULTS", {}), "name": name, **config}, vocab_size=16,
                           special_ids=SPECIALS)


class FakeCkpt:
    def __init__(self, process):
        self.process = process


def some_value(knob):
    """A valid value of the knob that is not its function's default."""
    if knob.choices:
        return knob.choices[-1]
    low = knob.low if knob.low is not None else 0
    return knob.kind(min(low + 1, knob.high) if knob.high is not None else low + 2)


def test_every_knob_is_a_keyword_of_its_function_and_every_sampler_is_listed_by_a_process():
    samplable = {s for name in PROCESS_NAMES for s in process_for(name).samplers}
    samplable |= set(process_for("block", shift=True, clean="causal").samplers)
    assert samplable == set(RECORDS), "a record no process lists, or a process listing an unknown sampler"
    for record in RECORDS.values():
        keywords = inspect.signature(record.function).parameters
        for knob in record.knobs:
            assert knob.name in keywords, f"{record.name} does not take {knob.name}"
        assert record.stops_at_eos == ("eos_id" in keywords)


def test_processes_declare_what_their_samplers_are():
    for name in PROCESS_NAMES:
        process = process_for(name)
        assert process.extends_context == all(RECORDS[s].extends_context for s in process.samplers)
    assert process_for("block", block_size=4).min_steps(10) == 3
    assert process_for("masked").min_steps(10) == 1


@pytest.mark.parametrize("sampler", sorted(RECORDS))
def test_every_sampler_and_knob_reaches_the_cli_and_the_server_with_the_same_plan(sampler):
    record = RECORDS[sampler]
    process = next(p for p in [process_for(n) for n in PROCESS_NAMES] + [process_for("block", shift=True,
                                                                                     clean="causal")]
                   if sampler in p.samplers)
    knobs = {k.public: some_value(k) for k in record.knobs}
    for group in record.exclusive:  # keep one of each exclusive group
        for k in group[1:]:
            knobs.pop(k, None)
    # the command line: every knob is a flag
    argv = ["generate", "run", "--sampler", sampler, "--steps", "16"]
    for public, value in knobs.items():
        argv += ["--" + public.replace("_", "-"), str(value)]
    args = build_parser().parse_args(argv)
    cli_request = SamplerRequest(sampler=args.sampler, steps=args.steps, seed=0,
                                 knobs={name: getattr(args, name) for name in all_knobs()})
    cli_plan = resolve(process, cli_request, generated=8)
    # the server: every knob is a field
    body = CompletionRequest.model_validate({"prompt": "x", "sampler": sampler, "steps": 16, "seed": 0, **knobs})
    server_plan = settings_for(body, FakeCkpt(process), Limits(), command="infill", generated=8).plan
    assert cli_plan == server_plan
    assert dict(cli_plan.knobs) == {record.knob(k).name: v for k, v in knobs.items()}
    assert cli_plan.temperature == record.default_temperature


def test_server_fields_are_the_knobs():
    assert set(all_knobs()) <= set(SamplingFields.model_fields)


@pytest.mark.parametrize("knobs, sampler, words", [
    ({"threshold": 1.5}, "confidence", "must be in [0, 1], got 1.5"),
    ({"threshold": 0.5, "factor": 1.0}, "confidence", "not both"),
    ({"top_p": 0.0}, "ancestral", "must be in (0, 1]"),
    ({"cache": "all"}, "confidence", "must be one of none, prefix, dual"),
    ({"block_length": 2}, "confidence", "at least 4"),
    ({"threshold": 0.9}, "ancestral", "does not take"),
    ({}, "ddim", "cannot sample a masked model"),
])
def test_the_cli_and_the_server_refuse_the_same_requests(knobs, sampler, words):
    """One set of checks: a threshold outside [0, 1] used to pass the CLI and fail the server."""
    process = process_for("masked")
    with pytest.raises(DlmError) as cli:
        resolve(process, SamplerRequest(sampler=sampler, steps=3, knobs=knobs), generated=8,
                spell=lambda k: "--" + k.replace("_", "-"))
    assert words in str(cli.value)
    body = CompletionRequest.model_validate({"prompt": "x", "sampler": sampler, "steps": 3, **knobs})
    with pytest.raises(ApiError) as server:
        settings_for(body, FakeCkpt(process), Limits(), command="generate", generated=8)
    assert server.value.status == 400 and words in server.value.message
    assert server.value.param is not None


def test_a_bad_knob_type_names_the_flag():
    with pytest.raises(DlmError, match="--top-k must be an integer"):
        resolve(process_for("masked"), SamplerRequest(knobs={"top_k": 2.5}), generated=4,
                spell=lambda k: "--" + k.replace("_", "-"))
