"""The agent channel on TCP 5723: the versioned .proto, its generated code, limits and versions."""
