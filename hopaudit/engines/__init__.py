"""Where the per-layer work runs: one process (local) or a Ray cluster, behind one protocol."""
