"""Jobs the CLI runs: plain functions over parsed documents, a Predictor and paths."""
