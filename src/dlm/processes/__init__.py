"""Forward (noising) processes and their losses, one file each; PROCESSES maps names to them."""

from dlm.processes.autoregressive import Autoregressive
from dlm.processes.base import (Denoiser, ForwardProcess, LossOutput, Process, gumbel_noise,
                                low_discrepancy_times, sample_categorical)
from dlm.processes.block import BlockDiffusion
from dlm.processes.gaussian import GaussianDiffusion
from dlm.processes.masked import MaskedDiffusion
from dlm.processes.uniform import UniformDiffusion

PROCESSES: dict[str, type] = {"masked": MaskedDiffusion, "uniform": UniformDiffusion, "gaussian": GaussianDiffusion,
                              "block": BlockDiffusion, "ar": Autoregressive}

__all__ = ["Autoregressive", "BlockDiffusion", "Denoiser", "ForwardProcess", "GaussianDiffusion", "LossOutput",
           "MaskedDiffusion", "PROCESSES", "Process", "UniformDiffusion", "gumbel_noise", "low_discrepancy_times",
           "sample_categorical"]
