"""Evidence of memorization beside the geometry: per-token scores, membership AUROCs,
extraction by greedy decoding."""
