"""Constants shared by the kernels, the op layer and the reference; importing this module does not
import triton (importing triton decides whether its CPU interpreter is used)."""

# Keys are q / max(||q||_2, KEY_NORM_EPS): a zero query gives a zero key instead of a division by zero.
KEY_NORM_EPS = 5e-5

# Chunk sizes the fused kernels take: powers of two, so every tile divides the chunk (no masks on
# query or key tiles), from 16 (the smallest tl.dot tile) to 256 (the register budget of one window).
CHUNK_SIZES = (16, 32, 64, 128, 256)
