"""The service's routers, one module per area (session, production, cabinet, pages)."""
