"""The tolerances of the math tests, in one place, each with what it allows for.

Relative errors are ``max over rows of ||x - ref|| / ||ref||``; absolute ones per element.
"""

# --- the engine against the float64 brute-force reference (tests/reference.py)
# The fast path in float64: agreement to float64 rounding.
FLOAT64_REL = 1e-9
# factored vs exact correction for a rank-1 V with epsilon = 0: the same math, in float64.
RANK1_REL = 1e-10
# factored vs exact for a rank-1 V with epsilon > 0: they differ by O(eps / sqrt(V)).
FACTORED_EPS_REL = 1e-3
# Vectors returned as float32 against the float64 reference.
FLOAT32_REL = 1e-6
# Norms of phi (float64 model) against the reference's norms.
NORM_REL = 1e-6

# --- float32 computations that must agree
# The same float32 computation done two ways (a text cut at max_len vs the cut text; the
# searcher's query encoder vs a fresh Featurizer; norms of unit rows).
FLOAT32_SAME_ATOL = 1e-5
# The same examples batched, padded or ordered differently (float32 reductions reorder).
BATCH_ATOL = 2e-5
# A float32 model's vectors against the same model in float64.
DTYPE_ATOL = 1e-4

# --- stored (float16) vectors
# A float16 unit vector against the float32 one it stores.
STORED_VECTOR_ATOL = 1e-3
# float16 vectors (two builds of one index, a profile's vs the base, norms of stored rows).
FLOAT16_ATOL = 2e-3
# Profile transforms of stored float16 vectors against float64 transforms of them.
PROFILE_ATOL = 3e-3
# Losses (float32 sums) and pre-normalization norms of two builds of one index.
LOSS_RTOL = 1e-4
STORED_NORM_RTOL = 1e-3

# --- tail-patch's one functional AdamW step against torch.optim.AdamW's, in float64
STEP_RTOL = 1e-12
STEP_ATOL = 1e-14

# --- search scores
# FAISS's inner products against a numpy scan of the same float16 vectors; one search against
# an equal one (other workers, streaming, over HTTP).
SCORE_ATOL = 1e-5
SCORE_RTOL = 1e-5
