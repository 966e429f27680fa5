"""Training with context-embedding learning (installed as cream_rt.train; imports torch)."""
