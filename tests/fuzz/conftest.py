"""The fuzz tier: hypothesis harnesses over every parser that faces the network or a user.

Bounded in time for CI: each harness runs ``NODEMESH_FUZZ_EXAMPLES`` inputs (default below), and
each input runs under the CPU-time deadline and memory bound of its target
(``tests/fuzz/harness.py``). Hypothesis' own deadline is off: the harness's deadline is CPU time,
which a shared machine does not distort. ``NODEMESH_FUZZ_EXAMPLES=20000 make fuzz`` digs deeper.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.fuzz.harness import load_targets

settings.register_profile(
    "nodemesh",
    max_examples=int(os.environ.get("NODEMESH_FUZZ_EXAMPLES", "1500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
    print_blob=True,
)
settings.load_profile("nodemesh")

load_targets()
