"""`python -m segstream.models` runs the segstream-models command line."""

from __future__ import annotations

import sys

from segstream.models.cli import main

sys.exit(main())
