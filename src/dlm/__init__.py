"""dlm: diffusion language models - train, sample, infill, evaluate and serve them.

Importing dlm has no side effects; the layers live in subpackages (see DESIGN.md):
``dlm.data``, ``dlm.schedules``, ``dlm.processes``, ``dlm.models``, ``dlm.sampling``,
``dlm.training``, ``dlm.evaluation`` and the ``dlm`` command line in ``dlm.cli``.
"""

__version__ = "0.1.0"
