"""Training and evaluation loops (no printing: progress goes through callbacks)."""
