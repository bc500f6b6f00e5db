"""The pipeline's stages, in order: warm-up, DeGRPO, evaluation; the quickstart runs all three; export shares the result."""
