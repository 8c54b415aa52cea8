"""leadsync: a self-hosted customer-data sync daemon."""

__version__ = "0.1.0"
