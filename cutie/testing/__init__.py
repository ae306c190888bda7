"""Code for tests, reference checks and benchmarks only: the training, inference and data code never imports
this package (tests/test_architecture.py checks it)."""
