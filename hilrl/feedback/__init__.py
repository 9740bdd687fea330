"""Human (and simulated human) feedback: scripted experts, teleop, preferences, corrections."""

from hilrl.feedback.experts import NOISE_FOR_SUCCESS, ScriptedExpert, make_expert

__all__ = ["NOISE_FOR_SUCCESS", "ScriptedExpert", "make_expert"]
