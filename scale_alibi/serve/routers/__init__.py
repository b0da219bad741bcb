"""HTTP routers, each built by a factory from the shared catalog and stores."""
