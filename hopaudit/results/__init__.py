"""What an audit returns: Audit, Comparison and Timeline, and the per-sequence metadata."""
