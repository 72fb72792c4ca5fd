"""selftest: the probe that ships inside every pytorch-cuda image.

It answers three questions in under two minutes: does the GPU stack work
(``validate``), how fast does this image run a reference transformer on this
GPU (``kernel``), and what do tokens cost (``cost``), and writes the answers
as a versioned JSON fingerprint (``fingerprint``) that ``compare`` can diff.

torch, numpy and pynvml are imported lazily inside functions so that the
arithmetic parts (``cost``, ``compare``, the schema) work on a host without
them.

Environment variables:
  SELFTEST_IMAGE_INFO     path of the image's self-description
                          (default /etc/pytorch-cuda/image.json)
  SELFTEST_DEBUG=1        print tracebacks of caught errors to stderr
  SELFTEST_NO_CUDA_GRAPH=1  time decode eagerly instead of through a CUDA graph
"""

__version__ = "0.1.0"

# Bump the major part when a field changes meaning or disappears; ``compare``
# refuses to compare fingerprints of different major versions.  Bump the minor
# part when fields are added: older fingerprints of the same major version stay
# comparable on the fields they have.
# 1.1: GEMM sustained rate, shape sweep and SM clocks; copy methods and the bytes-once
#      figure; energy windows with energy_note; throttle union; XID events; DCGM-style
#      device facts; libcuda's CUDA version; decode fusions.
SCHEMA_VERSION = "1.1"

# Exit codes of the command line, shared by every subcommand.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_REGRESSION = 3
