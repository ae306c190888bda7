"""The configuration: Hydra groups (the YAML files beside this module) and their typed, frozen form.

`train.parse_train_config` and `evaluation.parse_eval_config` are called once, in the entry points; everything
below them takes the typed objects. This package imports nothing else from cutie.
"""
