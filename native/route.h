/* Route fast path for the Alcor host agent: the DVR rewrite of routed first packets in C.
 *
 * OVS punts a routed packet whose destination has no flow (table L3_ROUTING's miss) to the
 * agent's internal port with the router's tag in the low four octets of the Ethernet source
 * and the source segment (VNI) in the low three octets of the destination, both behind the
 * marker ROUTE_TAG_0:ROUTE_TAG_1 (see docs/pipeline.md). For a known destination the engine
 * rewrites the frame (TTL-1 with an incremental IPv4 checksum fix, source and destination MAC)
 * and hands it back to OVS with an 802.1Q tag whose VID is the destination segment's per-host
 * index; a flow on that port pops the tag, sets the segment and delivers. An unknown destination
 * goes to a bounded queue that Python drains (full: dropped and counted).
 *
 * One opaque engine holds every table, queue and counter; nothing is global. Every public
 * function takes the engine's lock, so the I/O thread and Python updates run concurrently.
 */
#ifndef ACA_ROUTE_H
#define ACA_ROUTE_H

#include <stddef.h>
#include <stdint.h>

typedef struct aca_route_engine aca_route_engine;

/* First two octets of both tagged addresses of a punted frame. */
#define ROUTE_TAG_0 0x0a
#define ROUTE_TAG_1 0xcb
#define ROUTE_MAX_FRAME 2048
#define ROUTE_MAX_QUEUE 4096
#define ROUTE_MAX_VLAN 4094

enum aca_route_verdict {
    ROUTE_FORWARD = 0, /* rewritten into ``out``: send it back to OVS */
    ROUTE_PUNT = 1,    /* unknown destination: queued for Python (or dropped when full) */
    ROUTE_DROP = 2,    /* not forwarded: the counters say why */
};

enum aca_route_event_kind {
    ROUTE_EV_NONE = 0,  /* timed out */
    ROUTE_EV_PUNT = 1,  /* a punted frame (in the caller's buffer) */
    ROUTE_EV_HIT = 2,   /* a known destination was used (tag, ip): at most once per hit interval */
    ROUTE_EV_CLOSED = 3 /* aca_route_wake was called */
};

struct aca_route_event {
    int kind;
    uint32_t tag;
    uint32_t ip;   /* destination, host order */
    size_t len;    /* punted frame length (the whole frame, truncated to the caller's buffer) */
};

enum aca_route_counter {
    ROUTE_C_RX_FRAMES,       /* frames handed to the engine (punted by OVS or injected) */
    ROUTE_C_FORWARDED,       /* rewritten and sent back: known destination hits */
    ROUTE_C_PUNTED,          /* unknown destination, queued for the agent */
    ROUTE_C_DROP_QUEUE_FULL, /* unknown destination while the punt queue was full */
    ROUTE_C_DROP_TTL,        /* TTL <= 1: not forwarded */
    ROUTE_C_DROP_TRUNCATED,  /* shorter than its headers */
    ROUTE_C_DROP_NOT_IPV4,   /* another ethertype, or an IP version other than 4 */
    ROUTE_C_DROP_BAD_HEADER, /* IPv4 header length or total length inconsistent with the frame */
    ROUTE_C_DROP_NO_TAG,     /* addresses without the punt marker */
    ROUTE_C_DROP_UNKNOWN_ROUTER,
    ROUTE_C_DROP_NO_SEGMENT, /* the destination's segment has no index on this host */
    ROUTE_C_DROP_TOO_BIG,    /* no room for the 802.1Q tag in the output buffer */
    ROUTE_C_HITS_DROPPED,    /* hit events lost because their queue was full */
    ROUTE_C_TX_ERRORS,       /* frames the socket refused */
    ROUTE_C_COUNT
};

/* ``queue_cap`` punted frames at most (1..ROUTE_MAX_QUEUE). */
aca_route_engine *aca_route_engine_new(uint32_t queue_cap);
void aca_route_engine_free(aca_route_engine *e);
/* Forget every router, segment, destination, queued frame and event; zero the counters. */
void aca_route_engine_clear(aca_route_engine *e);

/* Router ``tag`` (reg2) with this host's DVR MAC. 0 or -1. */
int aca_route_router_set(aca_route_engine *e, uint32_t tag, const uint8_t *dvr_mac);
int aca_route_router_del(aca_route_engine *e, uint32_t tag);
/* Segment ``vni`` is re-injected with 802.1Q VID ``vlan`` (1..ROUTE_MAX_VLAN). 0 or -1. */
int aca_route_segment_set(aca_route_engine *e, uint32_t vni, uint16_t vlan);
int aca_route_segment_del(aca_route_engine *e, uint32_t vni);
/* Destination ``ip`` (host order) through router ``tag``: new destination and source MACs and
 * the destination segment. 0 or -1. */
int aca_route_dest_set(aca_route_engine *e, uint32_t tag, uint32_t ip, const uint8_t *dst_mac,
                       const uint8_t *src_mac, uint32_t vni);
int aca_route_dest_del(aca_route_engine *e, uint32_t tag, uint32_t ip);
/* Report a destination's hits at most once per ``ns`` (0: every hit). */
void aca_route_set_hit_interval(aca_route_engine *e, uint64_t ns);

/* Handle one punted frame: FORWARD (``*out_len`` bytes in ``out``), PUNT (queued) or DROP. */
int aca_route_rewrite(aca_route_engine *e, const uint8_t *frame, size_t len, uint8_t *out, size_t out_cap,
                      size_t *out_len);
/* The same for a frame the agent held: FORWARD is sent on the I/O socket at once. Returns the
 * verdict, or -errno when the send failed. */
int aca_route_inject(aca_route_engine *e, const uint8_t *frame, size_t len);

/* Wait up to ``timeout_ms`` for the next punted frame or hit; punts come first. */
int aca_route_next_event(aca_route_engine *e, struct aca_route_event *ev, uint8_t *buf, size_t cap,
                         int timeout_ms);
/* Wake every waiter with ROUTE_EV_CLOSED until the next aca_route_engine_clear. */
void aca_route_wake(aca_route_engine *e);

/* Copy up to ``n`` counters (enum aca_route_counter order); returns how many exist. */
size_t aca_route_counters(aca_route_engine *e, uint64_t *out, size_t n);
const char *aca_route_counter_name(size_t i);
/* Table and queue sizes. */
void aca_route_sizes(aca_route_engine *e, uint64_t *routers, uint64_t *segments, uint64_t *dests,
                     uint64_t *queued);

/* Benchmark: rewrite ``frame`` ``iterations`` times in batches of 64 under the lock, as the I/O
 * thread does (no socket, no counters); returns the elapsed nanoseconds, 0 if not forwardable. */
uint64_t aca_route_bench(aca_route_engine *e, const uint8_t *frame, size_t len, uint64_t iterations);

/* I/O thread on interface ``ifname`` (AF_PACKET, batched); 0 or -errno. */
int aca_route_io_start(aca_route_engine *e, const char *ifname);
void aca_route_io_stop(aca_route_engine *e);
/* 1 while the I/O thread runs, 0 when not started or stopped, -errno when it ended by itself;
 * ``loops`` (may be NULL) receives its wake-up count. */
int aca_route_io_status(aca_route_engine *e, uint64_t *loops);

#endif
