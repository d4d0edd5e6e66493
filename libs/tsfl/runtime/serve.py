"""``serve(NAME)``: run one service process (what each ``services/NAME.py`` main calls).

The same path as ``tsfl service NAME [options]``: the CLI's options and ``TSFL_*``
environment variables, logging, telemetry, then :func:`tsfl.runtime.service.run_service`.
"""

from __future__ import annotations

import sys


def serve(name: str, argv: list[str] | None = None) -> int:
    from tsfl.cli.main import main

    return main(["service", name, *(sys.argv[1:] if argv is None else argv)])
