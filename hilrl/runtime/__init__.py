"""Loops that run things: recording, training, evaluation; later actor/learner processes."""
