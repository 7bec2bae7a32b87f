"""graphopt's pass library, importable as ``graphopt.passes``.

Importing it registers every built-in pass; one module per pass, grouped by family.
"""

from graphopt.passes import cleanup, precision, quantize, sparsify, target  # noqa: F401
