"""The fact-tracing evaluation: benchmark preparation from LAMA T-REx, small models trained
from scratch, MRR / recall@k with bootstrap intervals, tail-patch, the ablation table, the demo."""
