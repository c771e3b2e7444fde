"""distill: agent run logs -> evidence -> scores -> datasets, with provenance and receipts."""

__version__ = "0.1.0"
