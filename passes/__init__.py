"""graphopt's pass library, importable as ``graphopt.passes``.

Importing it registers every built-in pass; one module per pass, grouped by family. The
package is callable: ``graphopt.passes()`` lists every registered pass with its options.
"""

from graphopt.passes import cleanup, precision, quantize, sparsify, target  # noqa: F401

from graphopt.core.callable import make_callable
from graphopt.core.registry import catalog

make_callable(__name__, catalog)
