"""hroute: one backend-health and failover daemon per machine for local-first LLM agents."""

__version__ = "0.1.0"
