"""``python -m multisource``: the same command as the installed ``multisource`` entry point."""

from .cli.main import main

raise SystemExit(main())
