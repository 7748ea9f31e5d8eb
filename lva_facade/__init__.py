"""The aiohttp facade: REST routes and OpenAPI generated from the protos, and the WebSocket bridge."""
