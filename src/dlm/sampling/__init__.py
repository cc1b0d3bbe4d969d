"""Samplers are plain functions over (denoiser, process, canvas); each has a record
(dlm.sampling.registry.RECORDS: its knobs and properties) and SAMPLERS maps names to the
functions. Each process lists the samplers that can sample it (`process.samplers`)."""

from dlm.sampling.ancestral import sample_ancestral
from dlm.sampling.autoregressive import sample_autoregressive
from dlm.sampling.block import sample_blocks
from dlm.sampling.canvas import Canvas
from dlm.sampling.confidence import sample_confidence
from dlm.sampling.gaussian import sample_ddim, sample_ddpm
from dlm.sampling.infill import InfillCanvas, infill_canvas, parse_template
from dlm.sampling.registry import RECORDS, Plan, SamplerRecord, SamplerRequest, resolve
from dlm.sampling.remasking import sample_remdm
from dlm.sampling.result import SampleOutput, StepInfo
from dlm.sampling.speculative import sample_speculative

SAMPLERS = {name: record.function for name, record in RECORDS.items()}

__all__ = ["Canvas", "InfillCanvas", "Plan", "RECORDS", "SAMPLERS", "SampleOutput", "SamplerRecord", "SamplerRequest",
           "StepInfo", "infill_canvas", "parse_template", "resolve", "sample_ancestral", "sample_autoregressive",
           "sample_blocks", "sample_confidence", "sample_ddim", "sample_ddpm", "sample_remdm", "sample_speculative"]
