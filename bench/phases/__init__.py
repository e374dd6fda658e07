"""One module per phase of the bench, each run with the shared Bench state."""
