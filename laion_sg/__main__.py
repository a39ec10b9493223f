"""`python -m laion_sg ...` is `laion-sg ...`."""

from laion_sg.cli import main

raise SystemExit(main())
