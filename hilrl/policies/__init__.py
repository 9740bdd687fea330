"""Learners and policies: SAC/RLPD, BC, DAgger, encoders, SB3 adapters."""
