"""Imported before torch by the package: OpenMP threads sleep at a barrier instead of spinning.

With the default policy, torch's two threads on a 2-core machine that other jobs share spin for
each other and a training step took 24x longer (bench/threads.py); sleeping costs nothing alone.
A policy the user set in OMP_WAIT_POLICY is kept; it works only if torch was not imported first.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
