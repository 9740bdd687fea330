"""The labelling page: a local FastAPI app showing pending preference queries as videos (``hilrl label RUN``)."""
