"""Outbound delivery of analytics events: callbacks (HTTP, MQTT, plugins) fed from a durable outbox."""
