"""Run modules: where Hydra configs meet the code (model spec from config, training run, post-training
evaluation, run folders). Entry points in src/ call these; the layers below never import Hydra."""
