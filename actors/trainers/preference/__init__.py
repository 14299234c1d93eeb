"""The pure core of preference optimisation (DPO, IPO, SimPO, variants): losses on per-sequence log-probs."""
