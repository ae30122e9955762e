"""``python -m zeroclaw``: the ``zeroclaw`` command."""

from zeroclaw.cli import main

raise SystemExit(main())
