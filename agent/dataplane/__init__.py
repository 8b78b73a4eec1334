"""Drivers: the only code that talks to OVS, netlink and sockets."""
