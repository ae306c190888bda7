"""Dataset preparation: the generated tiny dataset, BURST/OVIS conversion, empty-mask lists, data checks.

Everything here is package code; scripts/ holds thin command-line wrappers over it.
"""
