"""Guidance: data-fidelity terms (L2, Anscombe+L2, PKL) and their step rules."""

from pkl_dg.guidance.likelihoods import LIKELIHOODS, AnscombeL2, L2, Likelihood, PoissonKL, get_likelihood
from pkl_dg.guidance.steps import GuidanceStep, ramp_weight

__all__ = ["LIKELIHOODS", "AnscombeL2", "GuidanceStep", "L2", "Likelihood", "PoissonKL",
           "get_likelihood", "ramp_weight"]
