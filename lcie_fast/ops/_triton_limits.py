"""Shape limits of the Triton attention kernel, importable without Triton."""

MAX_KEYS = 1024
MAX_HEAD_DIM = 1024
