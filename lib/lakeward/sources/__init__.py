"""Synthetic data sources feeding the landing zone, so pipelines run without real customer data."""
