"""Face-mask detection: the pipeline's stages, the detector and classifier, the camera service.

Importing the package first caps the numeric libraries' CPU kernels at AVX2 (`facemask.numerics`),
before any of its modules loads torch, so every x86 machine trains the same models.
"""

from facemask.numerics import cap

cap()
