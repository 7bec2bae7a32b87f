"""``python -m graphopt.zoo``: export the zoo's models, or build and list the corpus."""

from graphopt.zoo import _main

raise SystemExit(_main())
