"""Simulated compute hosts on one machine: namespaces, private Open vSwitch instances, VMs."""
