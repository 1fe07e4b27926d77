"""``python -m streamsnap``: the same as the ``streamsnap`` command."""

from .cli import main

raise SystemExit(main())
