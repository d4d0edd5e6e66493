"""gRPC: the device and admin services (server side) and the device transport (SDK side)."""
