"""The ``flywheel`` command line: parse options, call the library function, print the result.

Nothing here decides anything: each command converts its options (the filter options through
``filter_options``) and calls one function of ``flywheel.<module>``. Output is a table for people or,
with ``--json``, JSON Lines for programs (one object per line: a call, a group, a migration).

Errors: a ``FlywheelError`` from the library, and click's own usage errors, end the process with
one line on stderr, ``flywheel: error: <what> (<where>)``, and exit code 1 (failure) or 2 (bad
usage). Any other exception is a bug and keeps its traceback.
"""

from ._base import cli, db_option, filter_options, json_option, main

# Each module registers its commands on ``cli`` when imported; ``flywheel --help`` lists them in
# this order.
# isort: off
from . import _store, _datasets, _steps, _config, _train, _eval, _drift, _promote, _mock  # noqa: F401
# isort: on

__all__ = ["cli", "db_option", "filter_options", "json_option", "main"]
