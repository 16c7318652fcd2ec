"""Spanish evaluation: metrics, lm-evaluation-harness task definitions and the suite registry."""
