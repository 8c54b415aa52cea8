"""leadsync: a self-hosted customer-data sync daemon."""

from actors import __version__ as __version__
