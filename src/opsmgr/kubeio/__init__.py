"""Plain-dict Kubernetes I/O shared by the local runtime and the management server."""
