"""Samplers are plain functions over (denoiser, process, canvas); SAMPLERS maps names to them.
Each process lists the samplers that can sample it (`process.samplers`)."""

from dlm.sampling.ancestral import sample_ancestral
from dlm.sampling.autoregressive import sample_autoregressive
from dlm.sampling.block import sample_blocks
from dlm.sampling.canvas import Canvas
from dlm.sampling.confidence import sample_confidence
from dlm.sampling.gaussian import sample_ddim, sample_ddpm
from dlm.sampling.infill import InfillCanvas, infill_canvas, parse_template
from dlm.sampling.remasking import sample_remdm
from dlm.sampling.result import SampleOutput, StepInfo
from dlm.sampling.speculative import sample_speculative

SAMPLERS = {"ancestral": sample_ancestral, "confidence": sample_confidence, "ddpm": sample_ddpm, "ddim": sample_ddim,
            "remdm": sample_remdm, "block": sample_blocks, "speculative": sample_speculative,
            "autoregressive": sample_autoregressive}

__all__ = ["Canvas", "InfillCanvas", "SAMPLERS", "SampleOutput", "StepInfo", "infill_canvas", "parse_template",
           "sample_ancestral", "sample_autoregressive", "sample_blocks", "sample_confidence", "sample_ddim", "sample_ddpm", "sample_remdm",
           "sample_speculative"]
