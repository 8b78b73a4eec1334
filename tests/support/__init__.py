"""Helpers shared by the test suites: real peer processes (brokers) and recording stand-ins."""
