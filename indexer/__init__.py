"""corpus -> index: readers, documents, token-budget batches, torch.distributed ranks and FSDP,
`tda index` (build.py) and `tda precondition` (precondition.py)."""
