"""swaa_server: the gRPC service and the `swaa` command line."""
