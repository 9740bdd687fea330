"""Arm drivers. Each is imported lazily by ``hardware.server.make_driver`` so a
machine without MuJoCo (or without a vendor SDK) can still run the others."""
