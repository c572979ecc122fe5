"""Facts about a model: its blocks and stacks, loading it, the precision it computes in."""
