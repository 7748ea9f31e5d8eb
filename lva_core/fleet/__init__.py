"""The fleet: agents that share one stream store, each with a lease on the database's clock."""
