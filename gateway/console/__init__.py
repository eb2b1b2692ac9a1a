"""The operator console (docs/contracts.md §8): server-rendered pages under `/console`, an HTTP
edge beside `gateway.http`, which mounts it."""
