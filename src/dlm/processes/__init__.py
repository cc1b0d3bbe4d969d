"""Forward (noising) processes and their losses, one file each; PROCESSES maps names to them."""

from dlm.processes.base import (Denoiser, ForwardProcess, LossOutput, gumbel_noise, low_discrepancy_times,
                                sample_categorical)
from dlm.processes.masked import MaskedDiffusion

PROCESSES: dict[str, type] = {"masked": MaskedDiffusion}

__all__ = ["Denoiser", "ForwardProcess", "LossOutput", "MaskedDiffusion", "PROCESSES", "gumbel_noise",
           "low_discrepancy_times", "sample_categorical"]
