"""Many environments at once: server connections sampled, the naive pattern beside."""
