"""The dataset index: which videos and images a stage trains on, every file checked up front."""
