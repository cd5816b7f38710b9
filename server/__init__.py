"""The server side, above the services: the registry of services, the signed host, the runtime
of a worker, ``gridcredit serve`` and the ``gridcredit`` command (docs/architecture.md)."""
