"""Imported before torch by the package: OpenMP threads spin briefly at a barrier, then sleep.

libgomp's default spins up to 300,000 times. When other jobs hold the cores, torch's two threads
then spin for a partner that is not running: a 2-thread training step took 1.45x longer beside
one busy process than with GOMP_SPINCOUNT=3000, which costs nothing on an idle machine
(OMP_WAIT_POLICY=PASSIVE, sleeping at once, cost 1.47x there; bench/threads.py). A wait policy
or spin count the user set is kept; this works only if torch was not imported first.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")
