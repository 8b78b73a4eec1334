"""Alcor host agent: goal states in, Open vSwitch programmed, per-resource statuses out."""
