"""Serving support: packaging models for BentoML, gate decisions and drawing (the service stays thin)."""
