"""``python -m zoo``: export the zoo's models, or build and list the corpus."""

from zoo import _main

raise SystemExit(_main())
