"""The robot side of hilrl: the robot server, arm drivers and their safety limits.

Nothing under ``hilrl/`` imports this package; ``hilrl serve-robot`` starts
``python -m hardware.server`` as a subprocess. This package imports only
``hilrl.envs.protocol``/``hilrl.envs.auth`` (and the MuJoCo tasks, for the sim driver).
"""
