"""DHCPv4 served on each host: the lease table is built here, the protocol runs in C (native/)."""
