"""OpenFlow 1.4 to the bridge's management socket: a pure codec and one persistent connection."""
