"""The fault matrix, on a real server: what the invocation in flight gets, and the next."""
