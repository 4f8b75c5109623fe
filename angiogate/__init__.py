"""angiogate: a DICOM quality gate for cath-lab X-ray angiography cine clips."""

import os

# OpenMP threads that spin while waiting starve everything else on a small
# server (the SCP's threads, a second torch pool): measured here, torch with
# 2 threads ran ~10x slower under load with the default policy. Must be set
# before torch is imported, so it is set where the package is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
