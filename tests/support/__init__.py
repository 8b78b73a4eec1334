"""Test helpers that run real peer processes (brokers) for the integration suite."""
