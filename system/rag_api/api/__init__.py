"""HTTP layer: request/response schemas, dependencies and routes."""
