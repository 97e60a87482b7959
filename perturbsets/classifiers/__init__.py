"""Downstream models attacked, trained and certified inside a perturbation set, and how their outputs are scored."""
