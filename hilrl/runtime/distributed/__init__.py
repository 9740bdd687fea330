"""Online RL across processes: the learner (training loop and its ZMQ server), actor processes, and the
transport between them (pyzmq, msgpack with raw numpy buffers, CurveZMQ off loopback)."""
