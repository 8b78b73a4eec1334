"""On-demand routing: the C fast path for routed first packets (native/route.c) and its glue."""
