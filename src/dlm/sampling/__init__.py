"""Samplers are plain functions over (denoiser, process, canvas); SAMPLERS maps names to them."""

from dlm.sampling.ancestral import sample_ancestral
from dlm.sampling.canvas import Canvas
from dlm.sampling.confidence import sample_confidence
from dlm.sampling.infill import InfillCanvas, infill_canvas, parse_template
from dlm.sampling.result import SampleOutput, StepInfo

SAMPLERS = {"ancestral": sample_ancestral, "confidence": sample_confidence}

__all__ = ["Canvas", "InfillCanvas", "SAMPLERS", "SampleOutput", "StepInfo", "infill_canvas", "parse_template",
           "sample_ancestral", "sample_confidence"]
