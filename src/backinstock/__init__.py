"""backinstock: back-in-stock notifications that are fair, batched, durable and private."""

__version__ = "0.1.0"
