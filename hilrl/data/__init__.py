"""Transitions, episodes, replay buffers and robomimic-layout HDF5 files."""
